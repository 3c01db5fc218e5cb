"""Reading a request's inputs within the configured limits."""

from __future__ import annotations

import asyncio

from fastapi import HTTPException, Request

from ersilia_pack.runtime.http.io import InputError, parse_inputs
from ersilia_pack.runtime.settings import ServeSettings

# Bodies bigger than this are parsed on a thread, off the event loop.
PARSE_IN_THREAD_BYTES = 1024 * 1024


async def read_inputs(
    request: Request, *, max_inputs: int | None = None, max_body_bytes: int | None = None
) -> list[str]:
    """The inputs of a request, within the configured limits (or the given ones, for jobs)."""
    settings: ServeSettings = request.app.state.settings
    hint = "send fewer" if max_inputs else "send fewer, or submit a job (POST /job/submit)"
    max_inputs = max_inputs or settings.max_inputs
    max_body = max_body_bytes or settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_body:
        raise HTTPException(413, f"the body is larger than {max_body} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > max_body:
            raise HTTPException(413, f"the body is larger than {max_body} bytes")
    content_type = request.headers.get("content-type", "")
    try:
        if len(body) > PARSE_IN_THREAD_BYTES:
            # Parsing takes a second per ~15 MB, which would stall every other request.
            inputs = await asyncio.to_thread(parse_inputs, content_type, bytes(body))
        else:
            inputs = parse_inputs(content_type, bytes(body))
    except InputError as error:
        raise HTTPException(error.status_code, str(error)) from error
    if len(inputs) > max_inputs:
        raise HTTPException(
            413, f"{len(inputs)} inputs is more than the limit of {max_inputs} per request: {hint}"
        )
    for position, value in enumerate(inputs):
        if len(value) > settings.max_input_length:
            raise HTTPException(
                422,
                f"input {position} is {len(value)} characters long; the limit is "
                f"{settings.max_input_length}",
            )
    return inputs
