"""Interoperability tests against real peers (dcmtk, Orthanc, DICOMweb clients, browsers)."""
