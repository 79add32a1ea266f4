"""Write DICOM series with pydicom from a test volume and its RAS affine (for the DICOM tests)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_series(folder: Path, vol: np.ndarray, affine: np.ndarray, series_number: int = 1,
                 description: str = "T1 test", skip: tuple[int, ...] = (), uid: str | None = None,
                 slope: float = 2.0, intercept: float = -100.0, jitter: dict | None = None,
                 transfer_syntax: str | None = None, prefix: str = "IM", shear_mm: float = 0.0,
                 patient_id: str = "SECRET-ID-123") -> list[Path]:
    """One file per slice vol[:, :, k] (DICOM rows run along the volume's second axis). `skip`
    leaves slices out (a missing slice); `jitter` {k: mm} moves a slice along the normal (uneven
    spacing); `shear_mm` shifts each slice that much further in-plane (a sheared series). Patient fields hold a made-up name, to check it never leaks."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, np.float64)
    dc, dr = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    row_dir, col_dir = lps[:3, 0] / dc, lps[:3, 1] / dr
    uid = uid or generate_uid()
    study = generate_uid()
    files = []
    stored = np.round((vol - intercept) / slope).astype(np.uint16)
    for k in range(vol.shape[2]):
        if k in skip:
            continue
        pos = lps[:3, 3] + k * lps[:3, 2]
        if jitter and k in jitter:
            pos = pos + np.cross(row_dir, col_dir) * jitter[k]
        pos = pos + row_dir * shear_mm * k  # a sheared series: each slice shifted in-plane
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
        path = folder / f"{prefix}{series_number:02d}_{k:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientName = "Doe^Jane"
        ds.PatientID = patient_id
        ds.Modality = "MR"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.InstanceNumber = k + 1
        arr = stored[:, :, k].T  # [row, col]: a row runs along the volume's first axis
        ds.Rows, ds.Columns = arr.shape
        ds.PixelSpacing = [float(dr), float(dc)]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [float(v) for v in pos]
        ds.SliceThickness = float(np.linalg.norm(lps[:3, 2]))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        if transfer_syntax:  # compressed: encapsulated junk a reader without a codec cannot decode
            from pydicom.encaps import encapsulate

            ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + b"\0" * 64])
            ds.is_little_endian, ds.is_implicit_VR = True, False
        else:
            ds.PixelData = np.ascontiguousarray(arr).tobytes()
            ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(str(path), write_like_original=False)
        files.append(path)
    return files


def write_report(path: Path) -> None:
    """A structured report object (no pixel data) to sit in a series folder."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.SeriesInstanceUID = generate_uid()
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.save_as(str(path), write_like_original=False)


def phantom(shape=(24, 28, 12)) -> np.ndarray:
    """An asymmetric test volume: its values change along every axis."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (10 * x + 4 * y + 50 * z + 100).astype(np.float32)  # even: exact with slope 2


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r
