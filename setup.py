"""The package layout, found on disk rather than listed by hand; the metadata stays in pyproject.toml.

One import namespace, `oncoplan`, over the card's top-level folders: a new sub-package of any of them is in
the wheel without an edit here (tests/test_install.py checks that every package folder of the tree is).
pyproject.toml's [tool.setuptools] cannot compute this mapping (its `find` directive searches folders
under their own names, not under a namespace prefix), so it lives here and nowhere else: setuptools takes
`packages`, `package_dir` and `package_data` from this file and the rest from pyproject.toml.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import find_namespace_packages, find_packages, setup

HERE = Path(__file__).resolve().parent
FOLDERS = {
    "oncoplan": "oncoplan",
    "oncoplan.training": "training",
    "oncoplan.apps": "apps",
    "oncoplan.operators": "operators",
    "oncoplan.deploy": "deploy",
    "oncoplan.bundles": "bundles",
}
# The shipped bundles travel as package data, so a non-editable install (a wheel, a MAP image) finds them.
# What a bundle ships: its configs, its weights (models/ and its sub-folders, e.g. ctv_llmseg's efficiency
# runs) and its README. Its other docs (curves, evaluation reports) and its data/ and eval/ stay in the tree.
SHIPPED = {"configs": ["*"], "models": ["*"], "docs": ["README.md"]}


def code_packages() -> list[str]:
    """Every regular package (a folder with __init__.py) under each mapped folder, under its namespace name."""
    packages = []
    for name, folder in FOLDERS.items():
        packages += [name, *(f"{name}.{sub}" for sub in find_packages(HERE / folder))]
    return packages


def bundle_data() -> dict[str, list[str]]:
    """The shipped folders of each bundle as namespace packages of their own, with what each ships.

    Python can import any folder with a suitable name, so setuptools treats bundles/ctv_llmseg/configs as
    the package oncoplan.bundles.ctv_llmseg.configs: while these were package data of oncoplan.bundles it
    printed a page of 'Package ... is absent from the `packages` configuration' for each (13 pages).
    Listed as packages, each carries its own data and setuptools has nothing to warn about.
    """
    data = {}
    for bundle in sorted(p for p in (HERE / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file()):
        prefix = f"oncoplan.bundles.{bundle.name}"
        for folder, patterns in SHIPPED.items():
            if (bundle / folder).is_dir():
                data[f"{prefix}.{folder}"] = patterns
        if (bundle / "models").is_dir():
            # Weights in sub-folders of models/ (no .py there: namespace packages).
            for sub in find_namespace_packages(bundle / "models"):
                data[f"{prefix}.models.{sub}"] = SHIPPED["models"]
    return data


BUNDLE_DATA = bundle_data()
# Data files of code packages: the synthetic physicians' practice fitted from the real table (synth/practice.py).
CODE_DATA = {"oncoplan.training.synth": ["*.json"]}
setup(packages=code_packages() + list(BUNDLE_DATA), package_dir=FOLDERS, package_data=BUNDLE_DATA | CODE_DATA)
