"""What the DICOMweb routes answer, for the OpenAPI document.

The DICOMweb routes build their responses themselves (DICOM JSON, multipart
bodies, images), so FastAPI cannot infer what they return; these tables say
it, per kind of route, with the media types PS3.18 defines and the error
statuses the handlers raise. The common answers (401, 403, 404, 422, 503)
are added for every route by ``readingroom.api_errors``.
"""

from __future__ import annotations

from typing import Any

from readingroom.api_errors import error_response

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_DICOM_JSON = {"application/dicom+json": {"schema": {"type": "array", "items": {"type": "object"}}}}
_STORE_RESPONSE = {"application/dicom+json": {"schema": {"type": "object"}}}
_NOT_ACCEPTABLE = error_response("None of the media types that Accept (or the accept parameter) allows can be sent")

#: QIDO-RS searches.
SEARCH: dict[int | str, dict[str, Any]] = {
    200: {"description": "The matches, as DICOM JSON (a Warning header says when more can be requested)",
          "content": _DICOM_JSON},
    400: error_response("An unknown or malformed query parameter"),
    406: _NOT_ACCEPTABLE,
}

#: WADO-RS retrieval of studies, series and instances.
INSTANCES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The instances as stored, in a multipart/related body (one instance: also application/dicom)",
          "content": {"multipart/related": _BINARY, "application/dicom": _BINARY}},
    400: error_response("An unsupported query parameter"),
    406: _NOT_ACCEPTABLE,
}

#: WADO-RS metadata.
METADATA: dict[int | str, dict[str, Any]] = {
    200: {"description": "DICOM JSON metadata of every instance (bulk data as BulkDataURI)", "content": _DICOM_JSON},
    406: _NOT_ACCEPTABLE,
}

#: WADO-RS frames and bulk data.
FRAMES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The frames or bulk data, one part each, in a multipart/related body",
          "content": {"multipart/related": _BINARY}},
    400: error_response("A malformed frame list"),
    406: _NOT_ACCEPTABLE,
}

#: Rendered images and thumbnails.
RENDERED: dict[int | str, dict[str, Any]] = {
    200: {"description": "A rendered image (all of them in a multipart/related body when asked for)",
          "content": {"image/jpeg": _BINARY, "image/png": _BINARY, "multipart/related": _BINARY}},
    400: error_response("A malformed rendering parameter (window, viewport, quality) or frame list"),
    406: _NOT_ACCEPTABLE,
}

#: STOW-RS.
STORE: dict[int | str, dict[str, Any]] = {
    200: {"description": "Every instance was stored (Store Instances Response)", "content": _STORE_RESPONSE},
    202: {"description": "Some instances were stored; the response lists the failed ones",
          "content": _STORE_RESPONSE},
    400: error_response("The body is not a well-formed multipart/related body"),
    409: {"description": "No instance was stored; the response says why for each", "content": _STORE_RESPONSE},
    413: error_response("The body is larger than the configured upload limit"),
    415: error_response('The body is not multipart/related; type="application/dicom"'),
}
#: The request body of STOW-RS, which the route reads as a stream.
STORE_BODY: dict[str, Any] = {
    "requestBody": {"required": True, "content": {
        'multipart/related; type="application/dicom"': _BINARY}},
}
