"""The stop summary of `edge-agent run` on a replay with MQTT off says so (it named a
broker "None")."""

from __future__ import annotations

import numpy as np

from tests.agentutil import run_cli


def test_the_summary_says_mqtt_is_disabled_not_broker_none(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["t,vib_x,vib_y,vib_z,current"]
    rows += [f"{i}," + ",".join(f"{v:.4f}" for v in rng.standard_normal(4)) for i in range(300)]
    csv = tmp_path / "rec.csv"
    csv.write_text("\n".join(rows) + "\n")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'device_id = "t"\nstate_dir = "{tmp_path / "state"}"\n[mqtt]\nenabled = false\n'
        '[[streams]]\nname = "s"\nmodel = "vibration-ae"\n[streams.source]\n'
        f'kind = "replay"\npath = "{csv}"\ntimestamp_column = "t"\nspeed = 0\n'
    )
    r = run_cli("run", "--config", str(cfg), timeout=120)
    assert r.returncode == 0, r.stderr
    text = r.stdout + r.stderr
    assert "records waiting (MQTT disabled)" in text
    assert "broker None" not in text
