"""The compiled part of optout (everything else is in pyproject.toml): the replay's per-batch
kernel, services/replay/_kernel.c (OpenSSL's libcrypto for AES-GCM and SHA-1). ``make install``
builds it in place; without it the replay runs its pure-Python path (services/replay/kernel.py)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "services.replay._kernel",
            ["services/replay/_kernel.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
