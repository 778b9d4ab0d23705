"""nerfstudio glue: the ``ns-process-data vggsfm`` converter, its import hook and the ``vggsfm-ns`` CLI.

Kept empty of imports: the hook module is imported at interpreter start-up (see ``hook.py``).
"""
