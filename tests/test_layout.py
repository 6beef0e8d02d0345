"""The package's layout: module paths, entry points, optional dependencies."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

#: module paths that were aliases of the demo and app modules, now removed
OLD_PATHS = (
    "captum_sfam.synthetic",
    "captum_sfam.trained",
    "captum_sfam.pretrained",
    "captum_sfam.datasets",
    "captum_sfam.bench",
)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("old", OLD_PATHS)
def test_the_old_alias_paths_are_gone(old):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "captum_sfam.app.bench", "--help"],
    ],
)
def test_the_benchmark_runs_as_a_module(command):
    done = run(*command)
    assert done.returncode == 0, done.stderr
    assert "--episodes" in done.stdout and "--quick" in done.stdout


@pytest.mark.parametrize(
    "command",
    [
        [str(Path(sys.executable).with_name("captum-sfam")), "--help"],
        [sys.executable, "-m", "captum_sfam.app", "--help"],
    ],
)
def test_the_console_script_and_python_m_app(command):
    done = run(*command)
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in ("demo", "explain", "bench"))


def test_import_captum_sfam_loads_no_optional_part():
    code = "import sys, captum_sfam\nprint(' '.join(sorted(sys.modules)))"
    done = run(sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    top = {name.split(".")[0] for name in loaded}
    # (numpy, matplotlib, PIL and tqdm come with captum itself)
    assert not top & {"scipy", "skimage", "timm", "torchvision"}
    assert not loaded & {"captum_sfam.demo", "captum_sfam.app", "captum_sfam.metrics"}


def missing(*names):
    """A find_spec that pretends ``names`` are not installed."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name.split(".")[0] in names:
            return None
        return real(name, *args, **kwargs)

    return find_spec


def test_missing_demo_dependencies_name_the_extra(monkeypatch):
    from captum_sfam.demo import pretrained

    monkeypatch.setattr(importlib.util, "find_spec", missing("timm", "skimage"))
    with pytest.raises(ImportError, match=r"timm .*captum-sfam\[demo\]"):
        pretrained.efficientnet_lite0()
    with pytest.raises(ImportError, match=r"scikit-image .*captum-sfam\[demo\]"):
        pretrained.sample_images()


def test_missing_torchvision_is_a_one_line_cli_error(monkeypatch, capsys, tmp_path):
    from captum_sfam.app import cli

    image = tmp_path / "x.png"
    pytest.importorskip("PIL.Image").new("RGB", (8, 8)).save(image)
    monkeypatch.setattr(importlib.util, "find_spec", missing("torchvision"))
    code = cli.main(["explain", str(image), str(image), "--model", "resnet18"])
    err = capsys.readouterr().err
    assert code == 2 and "captum-sfam[demo]" in err and "torchvision" in err


def test_missing_scipy_names_the_eval_extra(monkeypatch):
    import torch

    from captum_sfam.metrics import box_from_map, spearman

    real = importlib.import_module

    def no_scipy(name, *args, **kwargs):
        if name.split(".")[0] == "scipy":
            raise ImportError("No module named 'scipy'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_scipy)
    with pytest.raises(ImportError, match=r"captum-sfam\[eval\]"):
        box_from_map(torch.rand(4, 4))
    with pytest.raises(ImportError, match=r"captum-sfam\[eval\]"):
        spearman(torch.rand(4), torch.rand(4))
