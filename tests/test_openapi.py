"""The REST API against its own OpenAPI document, with schemathesis.

``schemathesis`` (PyPI) reads ``GET /openapi.json`` from a running broker, generates requests
for every operation from the document (its examples, the boundaries of every schema, and
random data, valid and invalid) and checks each answer:

* ``not_a_server_error``: no 5xx, whatever the input;
* ``status_code_conformance``, ``content_type_conformance``, ``response_headers_conformance``,
  ``response_schema_conformance``: every answer is one the document describes, with the
  content type and body schema it gives;
* ``unsupported_method``, ``missing_required_header``, ``use_after_free``,
  ``ensure_resource_availability``: methods a path does not have get 405, deleted resources
  stay deleted, created ones can be found.

Left out are ``positive_data_acceptance`` and ``negative_data_rejection``, which judge how
strict input validation is rather than whether answers match the document: the REST proxy
is deliberately lenient where its clients rely on it (unknown fields are ignored, a
consumer's `fetch.min.bytes` is accepted and unused) and answers some schema-valid
requests with its own 4xx (400 40002 for a topic that exists, 422 for a topic pattern that is
not a regular expression).

The run is bounded (``--max-examples`` per operation) so it takes well under a minute,
and uses a fixed seed so a failure reproduces; afterwards the broker still serves.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

from harness import http_get

CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",
    "missing_required_header",
    "use_after_free",
    "ensure_resource_availability",
])


def schemathesis_cmd() -> list[str]:
    exe = shutil.which("schemathesis") or shutil.which("st")
    return [exe] if exe else [sys.executable, "-m", "schemathesis.cli"]


def test_every_answer_matches_the_openapi_document(broker, tmp_path):
    """schemathesis finds no server error and no answer outside the document, over every
    operation of /openapi.json."""
    status, _ = http_get(broker.http_url + "/openapi.json")
    assert status == 200
    # Records reads long-poll for up to their `timeout` (30 s at the schema's bound) when
    # no record comes; the long poll itself is tested in test_rest.py, so here it is 0.
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        '[[operations]]\n'
        'include-name = "GET /consumers/{group}/instances/{instance}/records"\n'
        'parameters = { "query.timeout" = 0 }\n')
    cmd = schemathesis_cmd() + [
        "--config-file", str(config),
        "run", broker.http_url + "/openapi.json",
        "--checks", CHECKS,
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", "30",
        "--seed", "1",
        # One worker: a produce racing the deletion of its topic by another worker is
        # (rightly) refused with a retriable 503, which not_a_server_error would count.
        "--workers", "1",
        "--request-timeout", "40",
        "--no-color",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, timeout=240, cwd=tmp_path)
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, f"schemathesis found problems (exit {proc.returncode}):\n{out[-12000:]}"
    assert "Tested: " in out, out[-3000:]
    assert http_get(broker.http_url + "/healthz")[0] == 200
    assert broker.is_running()
