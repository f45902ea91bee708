"""The certificate request and response exchanged between a device and certgen."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from f2pipe_shared.topics import normalize_mac


class EnrollRequest(BaseModel):
    """`POST /v1/enroll`: prove the device is ours (claim code) and ask for a certificate."""

    model_config = ConfigDict(extra="forbid")

    mac: str = Field(description="the controller's eth0 MAC, with or without separators")
    claim_code: str = Field(min_length=4, max_length=64)
    csr_pem: str | None = Field(
        None,
        max_length=16_384,
        description="PEM CSR with CN f2-<mac>; omit it to have certgen generate the key pair",
    )

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str) -> str:
        return normalize_mac(value)


class EnrollResponse(BaseModel):
    serial: str = Field(description="the certificate's serial number, hexadecimal")
    cn: str
    certificate_pem: str
    ca_certificate_pem: str
    not_after: datetime
    private_key_pem: str | None = Field(
        None, description="only when certgen generated the key pair; returned once, never kept"
    )
