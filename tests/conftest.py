import atexit
import os
import shutil
import tempfile

# Triton kernels run on CPU tensors only under the interpreter, which is read at import time.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Generated task data goes to a folder of this test session, never to the user's cache
# (set before any Ray worker starts, so workers inherit it).
os.environ["EINSEARCH_CACHE"] = tempfile.mkdtemp(prefix="einsearch-test-cache-")
atexit.register(shutil.rmtree, os.environ["EINSEARCH_CACHE"], ignore_errors=True)

import torch  # noqa: E402

torch.set_num_threads(1)
