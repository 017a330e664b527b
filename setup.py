import re

from setuptools import find_packages, setup

# The version is written once, in the package.
with open("sheepdog_drmaa/__init__.py", encoding="utf-8") as init:
    VERSION = re.search(r'^__version__ = "([^"]+)"', init.read(), re.M).group(1)

setup(
    name="sheepdog_drmaa",
    version=VERSION,
    description="Map a Python function over argument tuples on a Grid Engine cluster, with per-task retries",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="MIT",
    packages=find_packages(include=["sheepdog_drmaa", "sheepdog_drmaa.*"]),
    package_data={"sheepdog_drmaa": ["py.typed"]},
    python_requires=">=3.9",
    install_requires=["drmaa>=0.7.9", "cloudpickle>=2.0", "werkzeug>=2.2", "tqdm>=4.0"],
    extras_require={
        "test": ["pytest>=7", "numpy", "ruff", "mypy"],
        "docs": ["sphinx>=5"],
    },
    entry_points={"console_scripts": ["sheepdog-drmaa = sheepdog_drmaa.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Distributed Computing",
    ],
)
