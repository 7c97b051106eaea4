"""`python tests/browser/warm_client.py <fedcore client args>`: a client process that does its slow
imports (torch, the data set loader, both transports) and one tiny autograd step first, then waits
for a line "go" on stdin and only then runs `fedcore client <args>`: the CLI itself, unchanged.

The browser tests use it for the late joiner, so "start a new client" on the page takes seconds
rather than the half-minute a cold torch import can take on a busy 2-core runner. Any other line
(or end of input) exits without joining.
"""
from __future__ import annotations

import sys

import torch

import fedcore.app.cli
import fedcore.client
import fedcore.app.data
import fedcore.app.models
import fedcore.loops
import transports.grpc
import transports.rest  # noqa: F401

x = torch.ones(4, 4, requires_grad=True)
(x @ x).sum().backward()  # first autograd call: thread pool and kernels set up now

if __name__ == "__main__":
    if sys.stdin.readline().strip() != "go":
        sys.exit(0)
    sys.argv = ["fedcore", "client", *sys.argv[1:]]
    fedcore.app.cli.app()
