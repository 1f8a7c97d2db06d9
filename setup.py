"""The one compiled module: the client's repeated call (`src/fleetinfer/server/_native.c`).

It is optional: without a C compiler the build goes on without it, and channels run their
repeated calls in Python (`fleetinfer.server.channel.native_available`)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "fleetinfer.server._native",
            ["src/fleetinfer/server/_native.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
