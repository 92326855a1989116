"""The watch-config file watch on a real filesystem: a material update that switches the
`current` link, an editor's save by rename, a burst of writes as one request, and
what is not a change (a read, another file of the folder)."""

import os
import subprocess
import sys

import gevent
import pytest

from runewarp.io.watch import FileWatch
from runewarp.material import server_cert_paths

pytestmark = pytest.mark.timeout(30)
SETTLE = 2.5  # one second of debounce, and room


@pytest.fixture
def requests():
    made = []
    watch = FileWatch(made.append)
    yield watch, made
    watch.close()


def test_a_material_update_switching_current_is_one_change_of_both_files(tmp_path, requests):
    watch, made = requests
    folder = tmp_path / "cert"
    runewarp = [sys.executable, "-m", "runewarp", "server", "cert"]
    subprocess.run([*runewarp, "init", "--dir", folder, "--hostname", "t.example.com"],
                   check=True, capture_output=True)
    crt, key = server_cert_paths(folder)
    watch.watch([crt, key], [folder])
    renew = subprocess.Popen([*runewarp, "renew", "--dir", folder], stdout=subprocess.DEVNULL)
    while renew.poll() is None:  # the loop runs while the files change, as in the daemon
        gevent.sleep(0.05)
    gevent.sleep(SETTLE)
    assert made == [f"{crt},{key}"]


def test_a_save_by_rename_is_seen_and_a_read_or_another_file_is_not(tmp_path, requests):
    watch, made = requests
    config = tmp_path / "server.toml"
    config.write_text("a = 1\n")
    watch.watch([config])
    gevent.sleep(1.1)  # a change in the second of the start would be one libev cannot see
    config.read_text()
    (tmp_path / "other.toml").write_text("b = 2\n")
    gevent.sleep(SETTLE)
    assert made == []
    (tmp_path / "new").write_text("a = 2\n")
    os.rename(tmp_path / "new", config)
    gevent.sleep(SETTLE)
    assert made == [str(config)]


def test_a_burst_of_writes_is_one_request_and_nothing_is_watched_after_close(tmp_path, requests):
    watch, made = requests
    config = tmp_path / "server.toml"
    config.write_text("a = 0\n")
    watch.watch([config])
    gevent.sleep(1.1)
    for n in range(1, 6):
        config.write_text(f"a = {n}\n")
        gevent.sleep(0.2)
    gevent.sleep(SETTLE)
    assert made == [str(config)]
    watch.close()
    config.write_text("a = 6\n")
    gevent.sleep(SETTLE)
    assert made == [str(config)]
