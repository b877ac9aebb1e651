"""A tag in a registry proves nothing: workers run only what the trusted manifest names, by digest.

An attacker who can push to the registry builds an image of their own with every label of the
pack's image copied (its content label made consistent with its own layers, so nothing local can
tell), and pushes it under the exact tag a worker and CI expect. A worker that may not build
refuses it with a clear error; CI builds its own instead of adopting it and records its digest in
the trusted manifest; a worker with the manifest runs exactly that digest, even after the tag was
moved again, and never the image the tag points to.
"""

from __future__ import annotations

import io
import json
from datetime import UTC
from pathlib import Path

import pytest

from attune_containers.core import labels as L
from attune_containers.core.render import INTERPRETER
from attune_containers.core.spec import DependencySpec
from attune_containers.services.manager import ContainerDependencyManager, UntrustedImageError
from attune_containers.services.manifest import TrustManifest
from attune_containers.services.prebuild import build_all

from ..support import unique_ref
from .test_prebuild import registry, write_pack  # noqa: F401 - registry is a fixture

SPEC = {"dependencies": [], "min_version": "3.13"}


def spec() -> DependencySpec:
    return DependencySpec(dependencies=[], min_version="3.13")


def forge(engine, manager: ContainerDependencyManager, pack_ref: str, remote: str) -> str:
    """The attacker's image: their own code, our labels, a content label consistent with it.
    Pushed under ``remote``; returns its ID."""
    plan = manager.plan(pack_ref, spec())
    client = engine.client
    dockerfile = (
        f"FROM {plan.base.reference}\nUSER root\nRUN mkdir -p /opt/attune/venv/bin && "
        "printf '#!/bin/sh\\necho pwned\\n' > /opt/attune/venv/bin/python && chmod +x /opt/attune/venv/bin/python\n"
    )
    bare = client.images.build(fileobj=io.BytesIO(dockerfile.encode()), rm=True, pull=False)[0]
    from datetime import datetime

    labels = plan.labels(["evil==1.0"], datetime.now(UTC).replace(microsecond=0))
    labels[L.REPOSITORY] = plan.repository
    labels[L.CONTENT] = L.content_identity(engine.inspect_image(bare.id))
    labelled = client.images.build(fileobj=io.BytesIO(f"FROM {bare.id}\n".encode()), labels=labels, rm=True, pull=False)[0]
    assert L.is_built_by_us(engine.inspect_image(labelled.id))  # nothing local can tell it apart
    FORGED.extend([labelled.id, bare.id])
    repository, tag = remote.rsplit(":", 1)
    engine.tag(labelled.id, repository, tag)
    engine.push(remote)
    engine.remove_image(remote)
    return labelled.id


FORGED: list[str] = []


@pytest.fixture(autouse=True)
def _remove_forged(engine):
    yield
    for image_id in reversed(FORGED):
        try:
            engine.remove_image(image_id, force=True)
        except Exception:  # noqa: BLE001 - gone already, or another test's parent
            pass
    FORGED.clear()


def fresh_host(engine, image: str) -> None:
    """As on a new worker host: the pack's image is not local."""
    if engine.inspect_image(image) is not None:
        engine.remove_image(image, force=True)


def test_forged_image_under_the_expected_tag_is_refused_and_ci_builds_its_own(settings, engine, registry, tmp_path):  # noqa: F811
    pack_ref = unique_ref("trust")
    tree = tmp_path / "packs"
    write_pack(tree, pack_ref, SPEC)
    ci_settings = settings.model_copy(update={"registry": registry, "state_dir": tmp_path / "ci"})
    worker_settings = settings.model_copy(update={"registry": registry, "allow_build": False, "state_dir": tmp_path / "worker"})
    plan = ContainerDependencyManager(ci_settings, engine).plan(pack_ref, spec())
    remote = f"{registry}/{plan.image}"
    forged = forge(engine, ContainerDependencyManager(ci_settings, engine), pack_ref, remote)
    fresh_host(engine, plan.image)

    # A worker that may not build, with no manifest: the tag is not taken, and it says why.
    worker = ContainerDependencyManager(worker_settings, engine)
    with pytest.raises(UntrustedImageError, match="proves nothing") as caught:
        worker.ensure_environment(pack_ref, spec())
    assert "TRUSTED_MANIFEST" in str(caught.value) and "TRUST_REGISTRY_TAGS" in str(caught.value)
    assert engine.inspect_image(plan.image) is None and engine.inspect_image(remote) is None

    # CI finds the tag already there: it builds its own, pushes it over the tag, records its digest.
    manifest_path = tmp_path / "trusted.json"
    report = build_all(ContainerDependencyManager(ci_settings, engine), tree, push=True, manifest=manifest_path)
    (entry,) = report.packs
    assert entry.outcome == "built", entry
    assert entry.image_id != forged and entry.digest and entry.pushed_by_digest == f"{registry}/{plan.repository}@{entry.digest}"
    manifest = TrustManifest.load(manifest_path)
    trusted = manifest.packs[pack_ref]
    assert (trusted.image_id, trusted.digest, trusted.dependency_hash) == (entry.image_id, entry.digest, plan.dependency_hash)
    assert engine.client.api.inspect_distribution(remote)["Descriptor"]["digest"] == entry.digest

    # The attacker moves the tag back to their image.
    assert forge(engine, ContainerDependencyManager(ci_settings, engine), pack_ref, remote) != entry.image_id
    assert engine.client.api.inspect_distribution(remote)["Descriptor"]["digest"] != entry.digest

    # A worker with the manifest runs the digest it names, not what the tag says now.
    fresh_host(engine, plan.image)
    trusting = ContainerDependencyManager(worker_settings.model_copy(update={"trusted_manifest": manifest_path}), engine)
    ensured = trusting.ensure(pack_ref, spec())
    assert ensured.outcome == "pulled" and ensured.info.id == entry.image_id
    code, output = engine.run_once(plan.image, [INTERPRETER, "-c", "print('ours')"])
    assert (code, output.strip()) == (0, "ours")

    # The forged image put locally under our tag (say an unsafe worker pulled it by tag): a worker
    # with the manifest does not use it, it pulls the trusted digest over it.
    fresh_host(engine, plan.image)
    unsafe = ContainerDependencyManager(
        worker_settings.model_copy(update={"trust_registry_tags": True, "state_dir": tmp_path / "unsafe"}), engine
    )
    assert unsafe.ensure(pack_ref, spec()).info.id != entry.image_id  # the documented danger of the opt-in
    again = ContainerDependencyManager(
        worker_settings.model_copy(update={"trusted_manifest": manifest_path, "state_dir": tmp_path / "w2"}), engine
    )
    ensured = again.ensure(pack_ref, spec())
    assert ensured.outcome == "pulled" and ensured.info.id == entry.image_id
    assert engine.inspect_image(plan.image).id == entry.image_id


def test_a_trusted_digest_missing_from_the_registry_is_never_replaced_by_the_tag(settings, engine, registry, tmp_path):  # noqa: F811
    pack_ref = unique_ref("gone")
    tree = tmp_path / "packs"
    write_pack(tree, pack_ref, SPEC)
    ci_settings = settings.model_copy(update={"registry": registry, "state_dir": tmp_path / "ci"})
    manifest_path = tmp_path / "trusted.json"
    (entry,) = build_all(ContainerDependencyManager(ci_settings, engine), tree, push=True, manifest=manifest_path).packs
    # The manifest names a digest the registry does not hold (deleted, or another registry's).
    document = json.loads(Path(manifest_path).read_text())
    document["packs"][pack_ref]["reference"] = document["packs"][pack_ref]["reference"].rsplit(":", 1)[0] + ":" + "0" * 64
    Path(manifest_path).write_text(json.dumps(document))
    fresh_host(engine, entry.image)
    worker = ContainerDependencyManager(
        settings.model_copy(
            update={
                "registry": registry,
                "allow_build": False,
                "trusted_manifest": manifest_path,
                "state_dir": tmp_path / "worker",
            }
        ),
        engine,
    )
    with pytest.raises(UntrustedImageError, match="nothing else is taken"):
        worker.ensure_environment(pack_ref, spec())
    assert engine.inspect_image(entry.image) is None
