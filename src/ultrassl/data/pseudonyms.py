"""DICOM patient ids kept out of everything ultrassl writes: a keyed hash stands in for each PatientID.

Why: the group id of a DICOM file is its PatientID (so k-fold splits never put one patient on both
sides), and group ids travel into manifests, ``folds.json``, prediction CSVs and reports, files that
users share with collaborators. A hospital MRN in clear there is a leak. An HMAC-SHA256 of the id under
a random salt keeps what the splits need (same patient -> same group, different patients -> different
groups) and nothing else; without the salt, the pseudonym cannot be tested against a list of known ids.

The salt is a small file kept beside the manifest (``manifest.csv.salt``, readable by its owner only)
and reused when the folder is indexed again, so group ids, and with them the folds, stay stable. Index
several folders of the same patients with one ``--salt-file`` so a patient gets one pseudonym in all.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from ultrassl.errors import UltrasslError

#: the prefix marks a pseudonym, so a reader of a manifest knows the id was not typed by a person
PREFIX = "pt-"
DIGITS = 16  # 64 bits: collisions are negligible for any number of patients a study holds


def salt_path_for(manifest: str | Path) -> Path:
    """Where the salt of ``manifest`` lives by default: ``<manifest>.salt`` beside it."""
    manifest = Path(manifest)
    return manifest.with_name(manifest.name + ".salt")


def read_salt(path: str | Path) -> bytes:
    """The salt in ``path`` (one line of hex digits, at least 16 bytes)."""
    path = Path(path)
    try:
        salt = bytes.fromhex(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError) as exc:
        raise UltrasslError(f"{path}: not a salt file (one line of hex digits) ({exc})") from exc
    if len(salt) < 16:
        raise UltrasslError(f"{path}: the salt is too short ({len(salt)} bytes; at least 16)")
    return salt


def read_or_create_salt(path: str | Path) -> bytes:
    """The salt in ``path``; a new random one is created there when the file is missing, readable by its
    owner only from the first byte (and by one process only: a second index racing it reads its salt)."""
    path = Path(path)
    if path.exists():
        return read_salt(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_salt(path)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(salt.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return salt


def pseudonym(patient_id: str, salt: bytes) -> str:
    """``pt-`` + the first 16 hex digits of HMAC-SHA256(salt, PatientID)."""
    return PREFIX + hmac.new(salt, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()[:DIGITS]


class Pseudonymiser:
    """PatientID -> pseudonym under the salt in ``salt_file``, read (or created) at the first id, so a
    folder without DICOM patient ids gets no salt file."""

    def __init__(self, salt_file: str | Path, create: bool = True):
        """``create=False``: the salt file must exist (a salt given by hand: a typo must not silently
        start a second set of pseudonyms, which would put one patient in two groups)."""
        self.salt_file = Path(salt_file)
        self.create = create
        self._salt: bytes | None = None

    @property
    def used(self) -> bool:
        return self._salt is not None

    def __call__(self, patient_id: str) -> str:
        if self._salt is None:
            if not self.create and not self.salt_file.exists():
                raise UltrasslError(
                    f"{self.salt_file}: no such salt file (--salt-file must name an existing one, e.g. the "
                    "MANIFEST.csv.salt an earlier index wrote; leave it out to create one beside the manifest)"
                )
            self._salt = read_or_create_salt(self.salt_file)
        return pseudonym(patient_id, self._salt)
