"""Packaging for nomic_embed: everything is read from settings.ini (the nbdev 2 convention)."""
from configparser import ConfigParser

import setuptools

config = ConfigParser(delimiters=["="])
config.read("settings.ini", encoding="utf-8")
cfg = config["DEFAULT"]


def requirements(key: str) -> list[str]:
    return cfg.get(key, "").split()


extras = {name: requirements(f"{name}_requirements") for name in ("dev", "st", "mteb", "eval", "data", "flash", "deepspeed", "tracking")}
licenses = {"apache2": "Apache-2.0"}
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable", "6 - Mature", "7 - Inactive"]

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    url=cfg["git_url"],
    license=licenses[cfg["license"]],
    keywords=cfg["keywords"],
    classifiers=[
        "Development Status :: " + statuses[int(cfg["status"])],
        "Intended Audience :: " + cfg["audience"],
        "Natural Language :: " + cfg["language"],
        "Programming Language :: Python :: 3",
    ],
    packages=setuptools.find_packages(include=["nomic_embed", "nomic_embed.*"]),
    include_package_data=True,
    python_requires=">=" + cfg["min_python"],
    install_requires=requirements("requirements"),
    extras_require=extras,
    entry_points={
        "console_scripts": cfg.get("console_scripts", "").split(),
        "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
    zip_safe=False,
)
