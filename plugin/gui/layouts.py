"""A row or a column of widgets in one call, for the panels' small button and field rows.

`hbox((edit, 1), button)`: an item is a widget or a layout, `(item, stretch)` gives it a stretch
factor, and `STRETCH` is free space (as `addStretch(1)`). The layout has no parent: add it to a form
or a box, which takes it over (as with a bare `QHBoxLayout()`).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from qgis.PyQt.QtWidgets import QBoxLayout, QHBoxLayout, QLayout, QVBoxLayout, QWidget

#: free space in an `hbox`/`vbox`
STRETCH = None

Item = Union[QWidget, QLayout, tuple[Union[QWidget, QLayout], int], None]


def hbox(*items: Item) -> QHBoxLayout:
    box = QHBoxLayout()
    _fill(box, items)
    return box


def vbox(*items: Item) -> QVBoxLayout:
    box = QVBoxLayout()
    _fill(box, items)
    return box


def _fill(box: QBoxLayout, items: Sequence[Item]) -> None:
    for item in items:
        widget: Optional[Union[QWidget, QLayout]]
        widget, stretch = item if isinstance(item, tuple) else (item, 0)
        if widget is None:
            box.addStretch(1)
        elif isinstance(widget, QLayout):
            box.addLayout(widget, stretch)
        else:
            box.addWidget(widget, stretch)
