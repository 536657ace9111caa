"""Tests for helpers.lab.patch_probe: fingerprints name what a dotted name points at, and `changes` lists
exactly the names that were replaced (checked with a monkeypatch, since unsloth needs a GPU)."""

from __future__ import annotations

import json

import pytest

from helpers.lab import patch_probe
from helpers.lab.patch_probe import changes, fingerprint, fingerprint_all, resolve


def test_resolve_follows_modules_then_attributes():
    assert resolve("json.decoder.JSONDecoder.decode") is json.decoder.JSONDecoder.decode
    with pytest.raises(AttributeError):
        resolve("json.no_such_function")
    with pytest.raises(ImportError, match="no importable module"):
        resolve("no_such_package_xyz.thing")


def test_fingerprint_names_module_qualname_and_a_relative_source():
    fp = fingerprint("json.dumps")
    assert fp["module"] == "json" and fp["qualname"] == "dumps" and fp["id"] == id(json.dumps)
    assert fp["source"].startswith("json/__init__.py:") or fp["source"].startswith("__init__.py:")
    assert not fp["source"].startswith("/"), "sources are printed without absolute local paths"


def test_fingerprint_of_a_missing_name_is_an_error_record_not_an_exception():
    fp = fingerprint("json.no_such_function")
    assert set(fp) == {"error"} and "AttributeError" in fp["error"]


def test_changes_lists_only_the_replaced_name(monkeypatch):
    targets = ("json.dumps", "json.loads")
    before = fingerprint_all(targets)
    assert changes(before, fingerprint_all(targets)) == {}

    def dumps(*args, **kwargs):  # a stand-in, as unsloth would install one
        return "patched"

    monkeypatch.setattr(json, "dumps", dumps)
    after = fingerprint_all(targets)
    changed = changes(before, after)
    assert list(changed) == ["json.dumps"]
    assert changed["json.dumps"]["before"]["module"] == "json"
    assert changed["json.dumps"]["after"]["module"] == __name__
    assert set(changed["json.dumps"]["after"]) == {*patch_probe.COMPARED, "error"}


def test_a_wrapper_with_the_original_name_is_still_seen_by_its_source(monkeypatch):
    import functools

    original = json.loads

    @functools.wraps(original)
    def loads(*args, **kwargs):
        return original(*args, **kwargs)

    before = fingerprint_all(("json.loads",))
    monkeypatch.setattr(json, "loads", loads)
    after = fingerprint_all(("json.loads",))
    assert after["json.loads"]["qualname"] == "loads" and after["json.loads"]["module"] == "json"  # wraps copied them
    assert "json.loads" in changes(before, after), "the wrapper's own code lives elsewhere"
    assert after["json.loads"]["defined"] == before["json.loads"]["source"]


def test_ids_are_compared_only_when_asked():
    before = {"x": {"id": 1, "module": "m", "qualname": "f", "source": "m.py:1"}}
    after = {"x": {"id": 2, "module": "m", "qualname": "f", "source": "m.py:1"}}
    assert changes(before, after) == {}
    assert list(changes(before, after, fields=("id", *patch_probe.COMPARED))) == ["x"]
