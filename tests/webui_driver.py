"""Run inside a real A1111 or Forge interpreter (cwd = the web UI folder) by the real-host tests; not a test itself.

``python webui_driver.py SPEC.json`` reads what to run from SPEC (``args``: the web UI's command line, ``out``:
StyleCloak's output folder, ``image``: a test PNG, ``jobs``: a subset of cloak / purify / mimicry / interrupt), starts
the web UI's own initialisation (Forge's ``initialize_forge`` first, as its ``webui.py`` does), which loads the
extension's ``scripts/``, builds every extension tab, and then clicks the StyleCloak tab's handlers through the web
UI's GPU queue (``sdwebui.bridge.gpu_call``: ``wrap_gradio_gpu_call``, and in Forge its main model thread, which this
script runs as Forge does). The loaded model's fingerprint is taken after one prompt of the web UI's own (see below)
and after every job. The last stdout line ``STYLECLOAK-RESULT {json}`` carries what the test asserts on.
"""
import json
import os
import sys
import threading
import time

spec = json.loads(open(sys.argv[1]).read())
sys.argv = ["webui.py"] + spec["args"]
sys.path.insert(0, os.getcwd())
t0 = time.time()
forge = os.path.isdir("modules_forge")
if forge:
    from modules_forge.initialization import initialize_forge

    initialize_forge()
from modules import initialize  # noqa: E402

initialize.imports()
initialize.initialize()
result = {"init_seconds": round(time.time() - t0, 1), "forge": forge}

from modules import script_callbacks, shared  # noqa: E402

if forge:
    from modules_forge import main_thread

    threading.Thread(target=main_thread.loop, daemon=True).start()  # webui.py's main thread does this
    on_model_thread = main_thread.run_and_wait_result
else:
    def on_model_thread(fn, *a):
        return fn(*a)

result["tabs"] = [t[1] for t in script_callbacks.ui_tabs_callback()]

import sdwebui.ui as ui  # noqa: E402  (importable now: the extension's script put its folder on sys.path)
from protect_core.integrity import diff_fingerprints, fingerprint  # noqa: E402
from sdwebui.bridge import current_host, gpu_call  # noqa: E402

out = spec["out"]
shared.opts.data["stylecloak_outdir"] = out
image = spec["image"]


def model_print():
    host = on_model_thread(current_host)
    return host, fingerprint(host.host_modules())


# The baseline is the model as the web UI leaves it after its own first prompt: Forge's text engine converts the CLIP
# token and position embeddings to float32 in place on its first encode (any txt2img does the same).
on_model_thread(current_host)  # Forge (2024+) loads the selected checkpoint now
on_model_thread(shared.sd_model.get_learned_conditioning, [""])
host, before = model_print()
result.update(family=host.family, describe={k: str(v) for k, v in host.describe().items()}, changed={})


def check_model(after_job):
    result["changed"][after_job] = diff_fingerprints(before, model_print()[1])


def listing():
    return sorted(os.listdir(out)) if os.path.isdir(out) else []


def timed(name, fn, *args):
    t = time.time()
    outputs = fn(*args)
    result[name] = {"status": outputs[-1], "files": outputs[1] if isinstance(outputs[1], list) else [],
                    "seconds": round(time.time() - t, 1)}
    check_model(name)
    return outputs


jobs = spec["jobs"]
cloaked = None
if "cloak" in jobs:
    outputs = timed("cloak", gpu_call(ui.cloak_click, 4), "task(stylecloak-cloak)", [image], "", "mist", "low", "",
                    False, 1, 4, 0, "")
    cloaked = next((f for f in result["cloak"]["files"] if f.endswith(".png")), None)
if "purify" in jobs:
    timed("purify", gpu_call(ui.purify_click, 4), "task(stylecloak-purify)", [cloaked or image], "", "impress", "",
          '{"iterations": 2}', 0)
if "mimicry" in jobs:
    timed("mimicry", gpu_call(ui.mimicry_click, 4), "task(stylecloak-mimicry)", [image], "", [cloaked or image], "",
          "cloaked", None, "", "purified", "lora", 2, 1, 1, 64, 0, "", "")
if "interrupt" in jobs:
    before_listing, box = listing(), {}
    click = gpu_call(ui.cloak_click, 4)
    worker = threading.Thread(target=lambda: box.update(out=click("task(stylecloak-long)", [image], "", "mist",
                                                                  "low", "", False, 500, 4, 0, "")))
    t = time.time()
    worker.start()
    # wait for this job (state.begin sets its id and zeroes the step) to reach its second step
    while worker.is_alive() and time.time() - t < 600 and not (
            shared.state.job == "task(stylecloak-long)" and shared.state.sampling_step >= 2):
        time.sleep(0.05)
    steps_seen = shared.state.sampling_step
    shared.state.interrupt()  # what the web UI's Interrupt button calls
    worker.join(600)
    result["interrupt"] = {"steps_before": steps_seen, "of": shared.state.sampling_steps,
                           "status": box.get("out", [""])[-1], "alive": worker.is_alive(),
                           "new_entries": sorted(set(listing()) - set(before_listing)),
                           "seconds": round(time.time() - t, 1)}
    check_model("interrupt")
result["seconds"] = round(time.time() - t0, 1)
print("STYLECLOAK-RESULT " + json.dumps(result), flush=True)
sys.stdout.flush()
os._exit(0)  # the web UI's daemon threads (Forge's model loop, memory monitor) need no orderly shutdown
