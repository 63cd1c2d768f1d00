"""The panels' row/column helper: items in order, stretch factors where given, free space as a stretch."""

from __future__ import annotations

from qgis.PyQt.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from plugin.gui.layouts import STRETCH, hbox, vbox


def test_hbox_and_vbox_place_widgets_layouts_stretches_in_order(qgis_app) -> None:
    parent = QWidget()
    label, a, b = QLabel("x", parent), QPushButton("a", parent), QPushButton("b", parent)
    column = vbox(a, b, STRETCH)
    row = hbox((label, 1), column, (QPushButton("c", parent), 2))
    assert isinstance(row, QHBoxLayout) and isinstance(column, QVBoxLayout)
    assert row.count() == 3 and row.itemAt(0).widget() is label and row.itemAt(1).layout() is column
    assert [row.stretch(i) for i in range(3)] == [1, 0, 2]
    assert [column.itemAt(i).widget() for i in range(2)] == [a, b]
    assert column.itemAt(2).spacerItem() is not None and column.stretch(2) == 1  # the free space
    QVBoxLayout(parent).addLayout(row)  # a parent takes the row over, as with a bare QHBoxLayout()
    assert row.parent() is not None
