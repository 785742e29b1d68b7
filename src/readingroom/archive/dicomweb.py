"""DICOMweb edge (placeholder until QIDO/WADO/STOW land)."""

from fastapi import APIRouter

router = APIRouter(tags=["dicomweb"])
