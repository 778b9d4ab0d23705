"""nerfstudio glue: the ``ns-process-data vggsfm`` converter, its import hook and the ``vggsfm-ns`` CLI.

Kept empty of imports. The ``ns-process-data`` hook is the top-level module ``vggsfm_ns_hook`` (imported at
interpreter start-up by ``vggsfm_ns_process_data.pth``, without importing this package).
"""
