"""XDG default locations of the config file, the material folders, and the pid and log files."""

import os
from collections.abc import Mapping
from pathlib import Path


def home_dir(env: Mapping[str, str]) -> Path:
    home = env.get("HOME")
    return Path(home) if home else Path.home()


def _xdg(env: Mapping[str, str], variable: str, fallback: str) -> Path:
    # The XDG spec says relative values are invalid and must be ignored.
    value = env.get(variable)
    if value and os.path.isabs(value):
        return Path(value)
    return home_dir(env) / fallback


def xdg_config_home(env: Mapping[str, str] = os.environ) -> Path:
    return _xdg(env, "XDG_CONFIG_HOME", ".config")


def xdg_data_home(env: Mapping[str, str] = os.environ) -> Path:
    return _xdg(env, "XDG_DATA_HOME", ".local/share")


def xdg_state_home(env: Mapping[str, str] = os.environ) -> Path:
    return _xdg(env, "XDG_STATE_HOME", ".local/state")


def default_config_path(env: Mapping[str, str] = os.environ) -> Path:
    return xdg_config_home(env) / "runewarp" / "config.toml"


def default_server_cert_dir(env: Mapping[str, str] = os.environ) -> Path:
    return xdg_data_home(env) / "runewarp" / "server" / "cert"


def default_client_identity_dir(env: Mapping[str, str] = os.environ) -> Path:
    return xdg_data_home(env) / "runewarp" / "client" / "identity"


def default_client_public_cert_dir(env: Mapping[str, str] = os.environ) -> Path:
    return xdg_data_home(env) / "runewarp" / "client" / "public-cert"


def default_client_visitor_ca_dir(env: Mapping[str, str] = os.environ) -> Path:
    return xdg_data_home(env) / "runewarp" / "client" / "visitor-ca"


def default_control_plane_ca_dir(env: Mapping[str, str] = os.environ) -> Path:
    return xdg_data_home(env) / "runewarp" / "ca"


def default_server_ca_file(env: Mapping[str, str] = os.environ) -> Path:
    return xdg_data_home(env) / "runewarp" / "client" / "server-ca.crt"


def default_acme_state_dir(env: Mapping[str, str], role: str) -> Path:
    return xdg_state_home(env) / "runewarp" / role / "acme"



def default_pid_file(env: Mapping[str, str], role: str) -> Path:
    """Where `-d` writes the pid: the runtime folder (emptied at logout and boot, so no
    stale file survives a reboot), else the state folder when there is none."""
    runtime = env.get("XDG_RUNTIME_DIR")
    folder = Path(runtime) if runtime and os.path.isabs(runtime) else xdg_state_home(env)
    return folder / "runewarp" / f"{role}.pid"


def default_log_file(env: Mapping[str, str], role: str) -> Path:
    return xdg_state_home(env) / "runewarp" / f"{role}.log"
