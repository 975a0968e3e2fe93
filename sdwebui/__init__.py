"""StyleCloak for Automatic1111 and Forge: model adapters, the job runners and the Gradio tab.

Importing this package needs neither A1111 nor Gradio: ``a1111_host`` / ``forge_host`` adapt the hosts' model
objects, ``bridge`` turns ``shared.state`` into the engine's progress and cancellation, ``jobs`` runs Cloak, Select
Layers, Purify and Mimicry Test on a host and writes their files, and ``ui`` builds the tab (it imports gradio and
``modules.*`` only inside its functions). ``scripts/stylecloak_tab.py`` registers the tab with A1111/Forge.
"""
