"""Writing fleet.toml files for tests: a small fleet on loopback with free ports."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port

TEST_TOKEN = "test-token-0123456789"
TEST_NODE_SECRET = "test-node-secret"


@dataclass
class FleetSpec:
    """What a test fleet contains; `render()` turns it into TOML text."""

    root: Path
    origins: list[str]
    hosts: list[str] = field(default_factory=lambda: ["www.example.com"])
    edges: int = 1
    shields: int = 0
    with_purge_api: bool = False
    with_geo: bool = False
    service_extra: str = ""
    edge_names: list[str] = field(default_factory=list)
    shield_names: list[str] = field(default_factory=list)

    def render(self) -> str:
        regions = [
            ("eu", 50.1, 8.7, "10.1.0.0/16"),
            ("us", 40.7, -74.0, "10.2.0.0/16"),
            ("ap", 35.7, 139.7, "10.3.0.0/16"),
        ]
        lines = []
        for name, lat, lon, net in regions:
            lines += [
                "[[regions]]",
                f'name = "{name}"',
                f"latitude = {lat}",
                f"longitude = {lon}",
                f'client_networks = ["{net}"]',
                "",
            ]
        hosts = ", ".join(f'"{h}"' for h in self.hosts)
        origins = ", ".join(f'"{o}"' for o in self.origins)
        lines += [
            "[[services]]",
            'name = "site"',
            f"hosts = [{hosts}]",
            f"origins = [{origins}]",
            self.service_extra,
            "",
        ]
        self.shield_names = []
        for i in range(self.shields):
            name = f"shield{i + 1}"
            self.shield_names.append(name)
            lines += [
                "[[shields]]",
                f'name = "{name}"',
                # one process per node unless a test asks for more ("auto" is the default)
                "workers = 1",
                f'region = "{regions[i % 3][0]}"',
                f'listen = "127.0.0.1:{free_port()}"',
                f'admin_listen = "127.0.0.1:{free_port()}"',
                f'cache_dir = "{self.root / name}"',
                'cache_size = "256MiB"',
                "",
            ]
        self.edge_names = []
        for i in range(self.edges):
            name = f"edge{i + 1}"
            self.edge_names.append(name)
            lines += [
                "[[edges]]",
                f'name = "{name}"',
                "workers = 1",
                f'region = "{regions[i % 3][0]}"',
                f'listen = "127.0.0.1:{free_port()}"',
                f'admin_listen = "127.0.0.1:{free_port()}"',
                f'cache_dir = "{self.root / name}"',
                'cache_size = "256MiB"',
                "",
            ]
        if self.with_purge_api:
            digest = hashlib.sha256(TEST_TOKEN.encode()).hexdigest()
            lines += [
                "[purge_api]",
                f'listen = "127.0.0.1:{free_port()}"',
                f'data_dir = "{self.root / "purge-api"}"',
                f'tokens = [{{ name = "ci", sha256 = "{digest}", services = ["site"] }}]',
                "",
            ]
        if self.with_geo:
            lines += [
                "[geo]",
                f'dns_listen = "127.0.0.1:{free_port()}"',
                f'http_listen = "127.0.0.1:{free_port()}"',
                'zone = "cdn.test"',
                "",
            ]
        return "\n".join(lines) + "\n"

    def write(self) -> Path:
        """Render and write `fleet.toml` under `root`; returns its path."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "fleet.toml"
        path.write_text(self.render(), encoding="utf-8")
        return path
