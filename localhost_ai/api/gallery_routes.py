"""Gallery routes (LocalAI's install API): apply, job status, cancel, available models, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from localhost_ai.protocol.models import ApplyRequest, ApplyResponse, AvailableModel, DeleteResponse, JobStatus
from localhost_ai.serving.installs import ModelInstaller

router = APIRouter(tags=["gallery"])


def _installer(request: Request) -> ModelInstaller:
    return request.app.state.installer


@router.post("/models/apply", response_model=ApplyResponse)
def apply(body: ApplyRequest, request: Request) -> ApplyResponse:
    job = _installer(request).apply(body)
    return ApplyResponse(uuid=job.uuid, status=f"{str(request.base_url).rstrip('/')}/models/jobs/{job.uuid}")


@router.get("/models/jobs", response_model=dict[str, JobStatus])
def list_jobs(request: Request) -> dict[str, Any]:
    # LocalAI answers with a mapping of job uuid -> status.
    return {job.uuid: job.snapshot() for job in _installer(request).jobs()}


@router.get("/models/jobs/{uuid}", response_model=JobStatus)
def job_status(uuid: str, request: Request) -> dict[str, Any]:
    return _installer(request).job(uuid).snapshot()


@router.post("/models/jobs/{uuid}/cancel", response_model=JobStatus)
def cancel_job(uuid: str, request: Request) -> dict[str, Any]:
    return _installer(request).cancel(uuid).snapshot()


@router.get("/models/available", response_model=list[AvailableModel])
def available(request: Request) -> list[dict[str, Any]]:
    return _installer(request).available()


@router.post("/models/delete/{name}", response_model=DeleteResponse)
def delete(name: str, request: Request) -> DeleteResponse:
    return _installer(request).delete(name)
