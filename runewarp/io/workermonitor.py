"""The supervisor's metrics listener (`workers = N`): it answers for every worker.

Each worker serves the ordinary routes of io/monitor.py on a Unix socket in the
supervisor's private folder (runewarp/workers.py).  The supervisor asks every worker at
once, each within FETCH_TIMEOUT, and answers on `metrics.bind-address`:

- /metrics: every worker's samples, each with a `worker="INDEX"` label (prometheus
  client's parser reads them, its exposition writes them), so `sum without (worker)`
  gives the figure of the whole process group;
- /status: the first answering worker's document, with each list (Tunnels,
  certificates, Server addresses, Services) holding every worker's rows, each with a
  `worker` field; `ready` and `workers` describe the group;
- /readyz: 200 when every worker answers 200;
- /healthz: 200 while the supervisor's loop runs.

A worker that does not answer (restarting) adds nothing to /metrics and /status, and
makes /readyz 503.
"""

import dataclasses
import http.client
import json
import socket

import gevent
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ..workers import metrics_socket
from .httpserve import respond
from .monitor import Monitor

FETCH_TIMEOUT = 2.0
MAX_ANSWER = 16 * 1024 * 1024


class _UnixConnection(http.client.HTTPConnection):
    """http.client over a worker's Unix socket."""

    def __init__(self, path, timeout):
        super().__init__("worker", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def fetch(path, route, timeout=FETCH_TIMEOUT):
    """(status, body) of GET `route` from the worker at the Unix socket `path`; None when it
    does not answer within `timeout`."""
    connection = _UnixConnection(path, timeout)
    with gevent.Timeout(timeout) as timer:
        try:
            connection.request("GET", route)
            response = connection.getresponse()
            return response.status, response.read(MAX_ANSWER)
        except (OSError, http.client.HTTPException):
            return None
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            return None
        finally:
            connection.close()


class _Gathered:
    """A collector of metric families already read (prometheus_client's Metric objects)."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


def merge_expositions(texts):
    """One exposition of every worker's (`texts`: {index: exposition text}), each sample
    labelled `worker="INDEX"`."""
    families = {}
    for index, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation,
                                                        family.type, family.unit)
            merged.samples.extend(Sample(s.name, {"worker": str(index), **s.labels}, s.value,
                                         s.timestamp, s.exemplar) for s in family.samples)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Gathered(list(families.values())))
    return generate_latest(registry)


def merge_status(documents, count):
    """One /status document from each worker's ({index: document})."""
    if not documents:
        return {"ready": False, "workers": count}
    merged = dict(documents[min(documents)])
    for key, value in merged.items():
        if isinstance(value, list):
            merged[key] = [{**row, "worker": index} if isinstance(row, dict) else row
                           for index, document in sorted(documents.items())
                           for row in document.get(key) or []]
    merged["ready"] = len(documents) == count and all(d.get("ready") for d in documents.values())
    merged["workers"] = count
    return merged


class SupervisorMonitor(Monitor):
    """The metrics listener of `supervisor` (runewarp/supervisor.py: `count`, `folder`,
    `ready()`, `config`), answering from its workers; StatsD is each worker's own."""

    def __init__(self, config, role, supervisor, log):
        if config is not None:
            config = dataclasses.replace(config, statsd_address=None)
        super().__init__(config, role, supervisor, None, log)

    def gather(self, route):
        """{worker index: (status, body)} of the workers that answered GET `route`."""
        supervisor = self.runtime
        jobs = {index: gevent.spawn(fetch, metrics_socket(supervisor.folder, index), route)
                for index in range(supervisor.count)}
        gevent.joinall(list(jobs.values()))
        return {index: job.value for index, job in jobs.items() if job.value is not None}

    def _metrics(self, start_response):
        texts = {index: body.decode("utf-8", "replace")
                 for index, (status, body) in self.gather("/metrics").items() if status == 200}
        return respond(start_response, "200 OK", merge_expositions(texts),
                       content_type=CONTENT_TYPE_LATEST)

    def _readyz(self, start_response):
        answers = self.gather("/readyz") if self.runtime.ready() else {}
        if len(answers) == self.runtime.count and all(s == 200 for s, _ in answers.values()):
            return respond(start_response, "200 OK", b"ready\n")
        return respond(start_response, "503 Service Unavailable", b"not ready\n")

    def status(self):
        documents = {}
        for index, (status, body) in self.gather("/status").items():
            try:
                documents[index] = json.loads(body) if status == 200 else None
            except ValueError:
                continue
        documents = {i: d for i, d in documents.items() if isinstance(d, dict)}
        merged = merge_status(documents, self.runtime.count)
        merged["ready"] = merged["ready"] and bool(self.runtime.ready())
        return merged
