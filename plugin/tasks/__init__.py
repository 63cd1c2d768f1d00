"""Thin QgsTask shells around the engine worker: run() never touches layers, canvas or widgets."""
