"""Packaging for kvspec: metadata and requirements come from settings.ini (nbdev 2 style)."""
from configparser import ConfigParser
from pathlib import Path

import setuptools

cfg = ConfigParser(delimiters=["="])
cfg.read(Path(__file__).parent / "settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

# mlx ships a CPU build for Linux as the `cpu` extra; on macOS the plain wheel carries Metal.
mlx = cfg["mlx_requirement"]
mlx_name, _, mlx_range = mlx.partition(">")
requirements = cfg["requirements"].split() + [
    f'{mlx_name}[cpu]>{mlx_range}; sys_platform == "linux"',
    f'{mlx}; sys_platform != "linux"',
]
dev_requirements = cfg["dev_requirements"].split()
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable"]

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    url=cfg["git_url"],
    license="Apache-2.0",
    keywords=cfg["keywords"].split(),
    classifiers=[
        f"Development Status :: {statuses[int(cfg['status']) - 1]}",
        f"Intended Audience :: {cfg['audience']}",
        "Natural Language :: English",
        "Programming Language :: Python :: 3",
    ],
    packages=["kvspec", "kvspec.presets"],
    package_data={"kvspec": ["*.json"], "kvspec.presets": ["*.json", "README.md"]},
    include_package_data=True,
    install_requires=requirements,
    extras_require={"dev": dev_requirements},
    python_requires=f">={cfg['min_python']}",
    entry_points={"console_scripts": cfg["console_scripts"].split(), "nbdev": [f"{cfg['lib_name']}={cfg['lib_name']}._modidx:d"]},
    zip_safe=False,
)
