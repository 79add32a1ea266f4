"""Every user action declared once (text, shortcuts, tip, checkable); menus, toolbars and the
shortcut help are all built from this table (as labelme's `new_action`)."""
from __future__ import annotations

from dataclasses import dataclass

from PyQt5 import QtGui, QtWidgets


@dataclass(frozen=True)
class ActionSpec:
    key: str  # attribute/slot name: MainWindow.on_<key>
    text: str
    shortcuts: tuple[str, ...] = ()
    tip: str = ""
    checkable: bool = False
    menu: str = ""
    icon: str = ""  # a QStyle standard pixmap name


ACTIONS: tuple[ActionSpec, ...] = (
    ActionSpec("open_scan", "&Open scan...", ("Ctrl+O",), "Open a scan (Analyze .hdr/.img, NIfTI .nii/.nii.gz)", menu="File", icon="SP_DialogOpenButton"),
    ActionSpec("open_dicom", "Open DICOM &folder...", ("Ctrl+Shift+O",), "Open a DICOM series from its folder (or drop the folder on the window)", menu="File"),
    ActionSpec("open_labels", "Open &labels...", ("Ctrl+L",), "Open a label map (e.g. OASIS FSL_SEG) for the open scan", menu="File"),
    ActionSpec("open_demo", "Open &demo scan", (), "Open the bundled demo brain (MNI ICBM152 2009a in OASIS layout)", menu="File"),
    ActionSpec("save_labels", "&Save labels", ("Ctrl+S",), "Save the label map", menu="File", icon="SP_DialogSaveButton"),
    ActionSpec("save_labels_as", "Save labels &as...", ("Ctrl+Shift+S",), "Save the label map as NIfTI or Analyze", menu="File"),
    ActionSpec("export_png", "Export &images (PNG)...", (), "Colour PNGs of the labels as the views show them: any plane, over the scan, single slices or a montage", menu="File"),
    ActionSpec("batch", "Segment a &cohort...", (), "Segment many scans into one volumes table with a QC report (brainseg batch)", menu="File"),
    ActionSpec("save_brain_mask", "Save &brain mask as...", (), "Save the brain (intracranial) mask, 0/1, as NIfTI or Analyze", menu="File"),
    ActionSpec("show_stats", "Tissue &volumes...", ("Ctrl+T",), "Volume per tissue class in mL, with CSV/JSON export", menu="File"),
    ActionSpec("quit", "&Quit", ("Ctrl+Q",), "Quit BrainSeg", menu="File"),
    ActionSpec("undo", "&Undo", ("Ctrl+Z",), "Undo the last stroke, fill or prediction", menu="Edit", icon="SP_ArrowBack"),
    ActionSpec("redo", "&Redo", ("Ctrl+Shift+Z", "Ctrl+Y"), "Redo", menu="Edit", icon="SP_ArrowForward"),
    ActionSpec("tool_navigate", "&Navigate", ("N",), "Click to set the cursor; drag to pan", True, "Tools"),
    ActionSpec("tool_brush", "&Brush", ("B",), "Paint the chosen class", True, "Tools"),
    ActionSpec("tool_eraser", "&Eraser", ("E",), "Erase to background", True, "Tools"),
    ActionSpec("tool_fill", "&Fill", ("F",), "Flood-fill a region of the slice with the chosen class", True, "Tools"),
    ActionSpec("class_0", "Class 0: background", ("0",), "Paint background", True, "Tools"),
    ActionSpec("class_1", "Class 1: CSF", ("1",), "Paint CSF", True, "Tools"),
    ActionSpec("class_2", "Class 2: grey matter", ("2",), "Paint grey matter", True, "Tools"),
    ActionSpec("class_3", "Class 3: white matter", ("3",), "Paint white matter", True, "Tools"),
    ActionSpec("brush_smaller", "Smaller brush", ("[",), "Brush size - 1", menu="Tools"),
    ActionSpec("brush_larger", "Larger brush", ("]",), "Brush size + 1", menu="Tools"),
    ActionSpec("toggle_overlay", "Show &overlay", ("V",), "Show or hide the label overlay", True, "View"),
    ActionSpec("toggle_outline", "Out&line mode", ("O",), "Draw class boundaries only", True, "View"),
    ActionSpec("opacity_down", "Overlay more transparent", ("Ctrl+[",), "", menu="View"),
    ActionSpec("opacity_up", "Overlay more opaque", ("Ctrl+]",), "", menu="View"),
    ActionSpec("toggle_brain_outline", "Show &brain outline", (), "The brain mask's outline (magenta) from brain extraction", True, "View"),
    ActionSpec("toggle_uncertainty", "Show &uncertainty", ("U",), "Heat map of the model's uncertainty (softmax entropy)", True, "View"),
    ActionSpec("single_view", "&One view (plane switch)", ("Ctrl+1",), "Show one large view", True, "View"),
    ActionSpec("plane_axial", "&Axial", ("Alt+1",), "Axial plane in one-view layout", True, "View"),
    ActionSpec("plane_coronal", "&Coronal", ("Alt+2",), "Coronal plane in one-view layout", True, "View"),
    ActionSpec("plane_sagittal", "&Sagittal", ("Alt+3",), "Sagittal plane in one-view layout", True, "View"),
    ActionSpec("reset_view", "&Reset zoom", ("R",), "Fit the slices to their views", menu="View"),
    ActionSpec("auto_window", "&Auto window/level", ("W",), "Window from the 0.5-99.5 percentiles", menu="View"),
    ActionSpec("reorient", "Reorien&t scan...", (), "See where the scan's axes point and where they came from, correct them (from the anatomy or by hand) and save a corrected copy: the header changes, never the voxels", menu="View"),
    ActionSpec("fill_between", "&Fill between slices...", ("Ctrl+I",), "Interpolate the labels of the empty slices between drawn ones (preview first)", menu="Labels"),
    ActionSpec("remove_islands", "Remove small &islands...", (), "Pieces of a class smaller than N voxels take the label around them", menu="Labels"),
    ActionSpec("keep_largest", "Keep the &largest piece", (), "Clear everything not connected to the largest piece of the brain", menu="Labels"),
    ActionSpec("smooth_labels", "&Smooth labels...", (), "Smooth class boundaries by a few mm (all classes together: no gaps, no overlaps)", menu="Labels"),
    ActionSpec("segment", "&Segment volume", ("Ctrl+R",), "Segment the whole scan with the network", menu="Segment", icon="SP_MediaPlay"),
    ActionSpec("segment_slice", "Segment &current slice", ("Ctrl+Shift+R",), "Segment the axial slice shown", menu="Segment"),
    ActionSpec("extract_brain", "E&xtract brain", (), "Find the brain in a head scan (skull on): its outline is shown and segmentation stays inside it", menu="Segment"),
    ActionSpec("cancel", "&Cancel", ("Esc",), "Cancel the running segmentation or training", menu="Segment", icon="SP_MediaStop"),
    ActionSpec("shortcuts", "&Keyboard shortcuts", ("F1",), "All shortcuts and mouse bindings", menu="Help"),
    ActionSpec("about", "&About BrainSeg", (), "", menu="Help"),
)

MOUSE_HELP = (
    ("Left button", "Paint / erase / fill with the current tool; set the cursor with Navigate"),
    ("Middle button or Shift + left drag", "Pan"),
    ("Right button drag", "Zoom"),
    ("Wheel", "Previous / next slice"),
    ("Ctrl + wheel", "Zoom"),
    ("Up / Down, Page Up / Page Down, Home / End", "Slice by 1, by 10, first / last (in the view under the mouse)"),
)


def build_actions(window, specs=ACTIONS, handlers=None) -> dict[str, QtWidgets.QAction]:
    """Create one QAction per spec, connected to on_<key> of the first of `handlers` (default: the
    window) that has it - the window and its controllers."""
    style = window.style()
    out = {}
    for spec in specs:
        act = QtWidgets.QAction(spec.text, window)
        act.setObjectName(f"action_{spec.key}")
        if spec.shortcuts:
            act.setShortcuts([QtGui.QKeySequence(s) for s in spec.shortcuts])
        if spec.tip:
            act.setToolTip(spec.tip)
            act.setStatusTip(spec.tip)
        act.setCheckable(spec.checkable)
        if spec.icon:
            act.setIcon(style.standardIcon(getattr(QtWidgets.QStyle, spec.icon)))
        slot = next((getattr(h, f"on_{spec.key}") for h in (handlers or (window,)) if hasattr(h, f"on_{spec.key}")),
                    None)
        if slot is not None:
            act.triggered.connect(lambda checked=False, s=slot: s())
        out[spec.key] = act
    return out


def build_menus(window, actions: dict[str, QtWidgets.QAction], specs=ACTIONS) -> dict[str, QtWidgets.QMenu]:
    menus: dict[str, QtWidgets.QMenu] = {}
    for spec in specs:
        if not spec.menu:
            continue
        if spec.menu not in menus:
            menus[spec.menu] = window.menuBar().addMenu(f"&{spec.menu}")
        menus[spec.menu].addAction(actions[spec.key])
    return menus
