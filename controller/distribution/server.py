"""Starting the distribution server inside the controller from its
settings ([distribution] in configs/controller.toml)."""

from __future__ import annotations

from pathlib import Path

from agent.wire import BundleSigner
from agent.wire.tls import NodeAuthority, server_context
from controller.config import Settings, split_listen
from controller.distribution.hub import Distributor
from controller.store import StoreError


async def start_distribution(settings: Settings, engine, workflow=None) -> Distributor:
    ca_dir = Path(settings.distribution_ca_dir)
    name = settings.distribution_name
    cert, key = ca_dir / f"{name}.pem", ca_dir / f"{name}.key"
    missing = [str(p) for p in (ca_dir / "ca.pem", cert, key, Path(settings.distribution_signing_key)) if not p.exists()]
    if missing:
        raise StoreError(f"distribution cannot start: missing {', '.join(missing)}; run: edgewarden controller "
                         f"keygen --config CONFIG (creates the fleet CA, the controller certificate, the signing key)")
    NodeAuthority(ca_dir)   # a usable CA, or CertificateError naming the directory
    signer = BundleSigner.from_file(settings.distribution_signing_key)
    distributor = Distributor(engine, signer, name=name, workflow=workflow,
                              digest_interval=settings.distribution_digest_interval_seconds)
    host, port = split_listen(settings.distribution_listen)
    await distributor.start(host, port, server_context(cert, key, ca_dir / "ca.pem"))
    return distributor
