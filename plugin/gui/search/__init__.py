"""The Search panel: query box, results list and model, hit texts, map highlight, thumbnails, exports."""
