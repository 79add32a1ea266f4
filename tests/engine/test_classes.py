"""The class table has one source: resources/colors.json."""
import json

from engine.core.classes import CLASS_KEYS, NUM_CLASSES, TISSUE_KEYS, tissue_classes
from engine.core.paths import RESOURCES


def test_class_constants_come_from_the_colour_table():
    table = json.loads((RESOURCES / "colors.json").read_text())["classes"]
    assert CLASS_KEYS == tuple(c["key"] for c in table) and NUM_CLASSES == len(table)
    assert [c.value for c in tissue_classes()] == list(range(NUM_CLASSES))  # label value = row
    assert TISSUE_KEYS == CLASS_KEYS[1:] and CLASS_KEYS[0] == "background"
