// StyleCloak tab (Automatic1111 / Forge): give each job a task id so that the web UI's own progress bar and live
// preview follow it. The first input of every StyleCloak button is a hidden textbox that receives the id; the
// Python side hands it to wrap_gradio_gpu_call. Defensive: if the web UI's helpers are missing, the job still runs.

function stylecloakSubmit(section, args) {
    var res = Array.prototype.slice.call(args);
    try {
        var id = (typeof randomId === "function") ? randomId()
            : "task(" + Math.random().toString(36).slice(2, 12) + ")";
        res[0] = id;
        if (typeof requestProgress === "function" && typeof gradioApp === "function") {
            var app = gradioApp();
            var bar = app.getElementById("stylecloak_" + section + "_progress");
            var gallery = app.getElementById("stylecloak_" + section + "_gallery");
            if (bar) {
                requestProgress(id, bar, gallery, function() {});
            }
        }
    } catch (e) {
        console.error("StyleCloak: progress display unavailable", e);
    }
    return res;
}

function stylecloak_submit_cloak() {
    return stylecloakSubmit("cloak", arguments);
}

function stylecloak_submit_layers() {
    return stylecloakSubmit("layers", arguments);
}

function stylecloak_submit_purify() {
    return stylecloakSubmit("purify", arguments);
}

function stylecloak_submit_mimicry() {
    return stylecloakSubmit("mimicry", arguments);
}
