"""benchmarks/peer_side_by_side.py: the per-step arithmetic, the alternation and the refusals (the peers' own code
is never in this repository, so a stand-in checkout with a script that takes the peer's arguments plays the peer;
our side is timed by the same wrapper, stubbed here)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peer_side_by_side as psbs  # noqa: E402


def test_refuses_a_checkout_without_the_peer_script(tmp_path):
    with pytest.raises(SystemExit, match="CAAT.py not found"):
        psbs.run(psbs.parse_args(["--peer", "caat", "--checkout", str(tmp_path)]))
    with pytest.raises(SystemExit, match="0 < n1 < n2"):
        (tmp_path / "CAAT.py").write_text("")
        psbs.run(psbs.parse_args(["--peer", "caat", "--checkout", str(tmp_path), "--steps", "5,5"]))


def test_per_step_cost_is_the_difference_of_two_lengths_and_runs_alternate(tmp_path, monkeypatch):
    """Peer: 2 s fixed + 0.5 s per image step; ours: 9 s fixed + 0.25 s: the fixed costs cancel, ratio 0.5."""
    ckpt = tmp_path / "Anti-DreamBooth"
    (ckpt / "attacks").mkdir(parents=True)
    (ckpt / "attacks" / "aspl.py").write_text('device = torch.device("cuda")\n')
    order, seen_scripts = [], []

    def fake_timed(cmd, env, cwd, timeout, log):
        ours = cmd[1:3] == ["-m", "protect_core"]
        if ours:
            n = int(cmd[cmd.index("--steps") + 1])            # image steps
            assert cmd[cmd.index("--method") + 1] == "aspl"
        else:
            seen_scripts.append(Path(cmd[1]))
            rounds = int(cmd[cmd.index("--max_train_steps") + 1])
            n = 6 * rounds                                      # ASPL: 6 image steps a round
            assert Path(cmd[cmd.index("--class_data_dir") + 1]).is_dir()
        order.append(("ours" if ours else "peer", n))
        return (9 + 0.25 * n) if ours else (2 + 0.5 * n)

    monkeypatch.setattr(psbs, "_timed", fake_timed)
    res = psbs.run(psbs.parse_args(["--peer", "aspl", "--checkout", str(ckpt), "--steps", "1,3", "--pairs", "2",
                                    "--images", "2"]))
    assert res["image_steps"] == [6, 18]
    assert res["peer_s"] == pytest.approx(0.5) and res["ours_s"] == pytest.approx(0.25)
    assert res["ratio"] == pytest.approx(0.5)
    assert order[:4] == [("peer", 6), ("ours", 6), ("ours", 18), ("peer", 18)]
    assert order[4:] == order[:4][::-1], "the second pair runs in the reverse order"
    assert res["cpu_fixups"] == 1 and all(s.name == "aspl.py" and s.parent.name == "peer_copy" for s in seen_scripts)
    assert (ckpt / "attacks" / "aspl.py").read_text() == 'device = torch.device("cuda")\n', "the checkout is untouched"
    assert "**0.50**" in psbs.markdown([res])
