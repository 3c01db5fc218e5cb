"""What a build takes from the host: its package-index settings and CA bundle, nothing that
points at the host's files; and which engine builds, with the errors a user sees."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import DEMO_DIR, FIXTURES, run_command

from ersilia_pack.containerize import (
    CA_TARGET,
    PIP_CONF_TARGET,
    ContainerError,
    ImageResult,
    IndexSettings,
    PipConfContext,
    find_engine,
    host_index_settings,
    image_variant,
    model_dockerfile,
    render_file,
)
from ersilia_pack.model_dir import read_model_dir


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_index_settings_come_from_pip_files_and_leave_host_paths_out(tmp_path: Path) -> None:
    ca = write(tmp_path / "corp-ca.pem", "-----BEGIN CERTIFICATE-----\n")
    site = write(
        tmp_path / "etc" / "pip.conf",
        "[global]\n"
        "index-url = https://pypi.corp.example/simple\n"
        "extra-index-url = file:///opt/pypi/simple https://extra.example/simple\n"
        f"cert = {ca}\n"
        "constraint = /etc/xdg/pip/constraints.txt\n"
        "find-links = /opt/wheels\n",
    )
    settings = host_index_settings(
        environ={}, config_files=[site], system_ca=tmp_path / "missing.crt"
    )
    assert settings == IndexSettings(
        index_url="https://pypi.corp.example/simple",
        extra_index_urls=("https://extra.example/simple",),
        ca_bundle=ca,
        left_out=("file:///opt/pypi/simple",),
    )


def test_environment_wins_over_pip_files_as_pip_has_it(tmp_path: Path) -> None:
    ca = write(tmp_path / "env-ca.pem", "x")
    other = write(tmp_path / "file-ca.pem", "x")
    site = write(
        tmp_path / "pip.conf",
        f"[global]\nindex-url = https://from-file.example/simple\ncert = {other}\n",
    )
    later = write(tmp_path / "user.conf", "[install]\nextra-index-url = https://user.example/s\n")
    settings = host_index_settings(
        environ={"PIP_INDEX_URL": "https://from-env.example/simple", "PIP_CERT": str(ca)},
        config_files=[site, later],
    )
    assert settings.index_url == "https://from-env.example/simple"
    assert settings.extra_index_urls == ("https://user.example/s",)
    assert settings.ca_bundle == ca


def test_ca_bundle_falls_back_to_ssl_cert_file_then_the_system_bundle(tmp_path: Path) -> None:
    ssl = write(tmp_path / "ssl.pem", "x")
    system = write(tmp_path / "system.pem", "x")
    assert (
        host_index_settings(
            environ={"SSL_CERT_FILE": str(ssl)}, config_files=[], system_ca=system
        ).ca_bundle
        == ssl
    )
    assert host_index_settings(environ={}, config_files=[], system_ca=system).ca_bundle == system
    assert (
        host_index_settings(
            environ={"PIP_CERT": str(tmp_path / "gone.pem")}, config_files=[], system_ca=system
        ).ca_bundle
        == system
    )
    assert (
        host_index_settings(environ={}, config_files=[], system_ca=tmp_path / "no.pem").ca_bundle
        is None
    )


def test_build_pip_conf_names_the_mounted_ca_not_the_hosts() -> None:
    text = render_file(
        "container/pip.conf.j2",
        PipConfContext(
            index_url="https://pypi.corp.example/simple",
            extra_index_urls=["https://a.example/s", "https://b.example/s"],
            trusted_hosts=[],
            cert=CA_TARGET,
        ),
    )
    assert "index-url = https://pypi.corp.example/simple" in text
    assert "extra-index-url = https://a.example/s https://b.example/s" in text
    assert f"cert = {CA_TARGET}" in text
    assert "trusted-host" not in text


def test_model_dockerfile_mounts_secrets_and_bakes_no_ca() -> None:
    spec = read_model_dir(DEMO_DIR)
    with_ca = model_dockerfile(spec, base_image="localhost/base:x", with_ca=True)
    assert with_ca.startswith("# eos-demo")
    assert "FROM localhost/base:x" in with_ca
    assert f"--mount=type=secret,id=ca-bundle,target={CA_TARGET}" in with_ca
    assert f"PIP_CONFIG_FILE={PIP_CONF_TARGET}" in with_ca
    assert "ersilia_pack --model_dir /build/model --system --eos /eos" in with_ca
    assert "COPY" not in with_ca and "ADD " not in with_ca
    without = model_dockerfile(spec, base_image="localhost/base:x", with_ca=False)
    assert "ca-bundle" not in without and "SSL_CERT_FILE" not in without


def test_a_gpu_image_packs_the_gpu_variant_and_says_how_to_give_it_the_gpus() -> None:
    with_gpu = read_model_dir(FIXTURES / "install-for-machine")
    assert image_variant(with_gpu, gpu=True) == "gpu"
    assert image_variant(with_gpu, gpu=False) is None
    # a model without install_gpu.sh: the pack in the build picks (install.sh on x86_64)
    assert image_variant(read_model_dir(DEMO_DIR), gpu=True) is None
    dockerfile = model_dockerfile(with_gpu, base_image="b", with_ca=False, variant="gpu")
    assert "ersilia_pack --model_dir /build/model --system --eos /eos --variant gpu " in dockerfile
    plain = model_dockerfile(with_gpu, base_image="b", with_ca=False)
    assert "ersilia_pack --model_dir /build/model --system --eos /eos \\\n" in plain
    built = {"tag": "m:1", "base_tag": "b", "model_id": "m", "size": None, "base_size": None}
    figures = {**built, "python_size": None, "dockerfile": ""}
    assert ImageResult(engine="docker", gpu=True, **figures).run_command() == (
        "docker run --gpus all -p 8080:80 m:1"
    )
    assert ImageResult(engine="podman", gpu=True, **figures).run_command() == (
        "podman run --device nvidia.com/gpu=all "
        "--sysctl net.ipv4.ip_unprivileged_port_start=80 -p 8080:80 m:1"
    )
    assert ImageResult(engine="docker", **figures).run_command() == "docker run -p 8080:80 m:1"


def test_no_engine_on_path_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patched:
        patched.setenv("PATH", str(tmp_path))
        with pytest.raises(ContainerError, match="no container engine to build with"):
            find_engine()
    done = run_command(
        "ersilia_pack", "containerize", "--model_dir", DEMO_DIR, env={"PATH": str(tmp_path)}
    )
    assert done.returncode == 4
    assert "error: no container engine to build with: docker is not on PATH" in done.stderr
    assert "podman is not on PATH" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_invalid_model_dir_stops_before_any_build() -> None:
    done = run_command("ersilia_pack", "containerize", "--model_dir", FIXTURES / "bad-metadata")
    assert done.returncode == 1
    assert "problem" in done.stderr
    assert "Traceback" not in done.stderr
