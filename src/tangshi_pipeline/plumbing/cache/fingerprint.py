"""The four parts of a node's fingerprint, and whether a node's record still matches them.

``code``: :class:`~.code.CodeFingerprint` of the node function. ``config``: the node's wiring and
the catalog description of each input and output dataset, with the code of its class.
``params``: each ``params:<key>`` (or ``parameters``) input, hashed as a whole value; a node wired
to ``params:data_processing.split_salt`` depends on that key and on nothing else of the section.
``inputs``: each persisted input's content digest (for a versioned one: the version loaded and
its digest); a memory input's producer fingerprint; ``"state"`` for a dataset whose class sets
``cache_role = "state"`` (the node's own resumable state, not an input).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from kedro.pipeline.node import Node

from .code import CodeFingerprint
from .describe import describe, is_memory, is_param, is_versioned, latest_version, load_path, local_path, save_path
from .digest import digest_json
from .files import FileIndex


class Fingerprints:
    """Fingerprint parts of the nodes of one run, against that run's catalog.

    ``producer`` maps each dataset to the node of the run that writes it; ``consumed`` holds the
    datasets some node of the run reads; ``known`` collects, node by node, the fingerprint of every
    node that ran or was found up to date (a memory input is fingerprinted by its producer's)."""

    def __init__(self, catalog, files: FileIndex, producer: Mapping[str, Node], consumed: set[str]):
        self.files = files
        self.known: dict[str, str] = {}
        self._catalog = catalog
        self._code = CodeFingerprint()
        self._producer = producer
        self._consumed = consumed

    def dataset(self, name: str):
        return self._catalog.get(name, fallback_to_runtime_pattern=True)

    def code(self, node: Node) -> str:
        return self._code.digest(node.func)

    def config(self, node: Node) -> str:
        parts = {"node": node.name, "inputs": list(node.inputs), "outputs": list(node.outputs), "datasets": {}}
        for name in [*node.inputs, *node.outputs]:
            if is_param(name):
                continue
            dataset = self.dataset(name)
            parts["datasets"][name] = {"type": self._code.digest(type(dataset)),
                                       "describe": None if is_memory(dataset) else describe(dataset)}
        return digest_json(parts)

    def params(self, node: Node) -> dict[str, str]:
        """Digest of each parameter input's current value (not catalog.load: no log line per check)."""
        return {name: digest_json(self.dataset(name).load()) for name in node.inputs if is_param(name)}

    def input(self, name: str) -> str | None:
        """Digest of a dataset input as it would be loaded now; None when it cannot be fingerprinted."""
        dataset = self.dataset(name)
        if getattr(dataset, "cache_role", None) == "state":
            return "state"  # state the node keeps for itself (training checkpoints), not an input
        producer = self._producer.get(name)
        from_producer = "node:" + self.known[producer.name] if producer and producer.name in self.known else None
        if is_memory(dataset):
            return from_producer
        path = load_path(dataset)
        if path is None:
            return from_producer  # not a local file: trust its producer
        digest = self.files.digest(path)
        if digest is not None and is_versioned(dataset):
            return f"{dataset.resolve_load_version()}:{digest}"
        return digest

    def inputs(self, node: Node) -> dict[str, str | None]:
        return {name: self.input(name) for name in node.inputs if not is_param(name)}

    def forget_outputs(self, node: Node) -> None:
        """The node is about to write its outputs: digests known for their paths are stale."""
        for name in node.outputs:
            path = save_path(self.dataset(name))
            if path is not None:
                self.files.forget(path)

    def saved_outputs(self, node: Node) -> dict[str, dict]:
        """Each output as this node has just saved it: path, content digest, version."""
        outputs = {}
        for name in node.outputs:
            dataset = self.dataset(name)
            if is_memory(dataset):
                outputs[name] = {"memory": True}
                continue
            path = save_path(dataset)
            outputs[name] = {
                "path": str(path) if path else None,
                "digest": self.files.digest(path) if path else None,
                "version": dataset.resolve_save_version() if is_versioned(dataset) else None,
            }
        return outputs

    def changed_outputs(self, outputs: dict[str, dict]) -> list[str]:
        """Outputs whose bytes on disk are no longer the ones the node saved (hashed again now)."""
        changed = []
        for name, saved in outputs.items():
            if saved.get("path"):
                path = Path(saved["path"])
                self.files.forget(path)
                if self.files.digest(path) != saved["digest"]:
                    changed.append(name)
        return changed

    def stale(self, node: Node, record: dict) -> str | None:
        """Why ``record`` no longer describes the node as it would run now; None when it does."""
        if record["code"] != self.code(node):
            return "code changed"
        if record["config"] != self.config(node):
            return "dataset configuration changed"
        for name, digest in self.params(node).items():
            if record["params"].get(name) != digest:
                return f"parameter {name} changed"
        for name in node.inputs:
            if is_param(name):
                continue
            digest = self.input(name)
            if digest is None:
                return f"input {name} cannot be fingerprinted"
            if record["inputs"].get(name) != digest:
                return f"input {name} changed"
        for name in node.outputs:
            reason = self._output_problem(name, record["outputs"].get(name))
            if reason:
                return reason
        return None

    def _output_problem(self, name: str, stored: dict | None) -> str | None:
        """Why an output on disk is not the one the record names (missing, another version,
        modified); None when it is."""
        dataset = self.dataset(name)
        if stored is None:
            return f"output {name} not recorded"
        if is_memory(dataset):
            return None if name in self._consumed else f"output {name} is a memory dataset nobody here consumes"
        if is_versioned(dataset):
            latest = latest_version(dataset)
            if latest is None:
                return f"output {name} missing"
            if latest != stored.get("version"):
                return f"output {name}: latest version {latest} was not written by this node's last run"
            path = Path(str(dataset._get_versioned_path(latest)))
        else:
            path = local_path(dataset)
            if path is None:
                return None if dataset.exists() else f"output {name} missing"
        digest = self.files.digest(path)
        if digest is None:
            return f"output {name} missing"
        if digest != stored.get("digest"):
            return f"output {name} was modified after this node wrote it"
        return None
