#!/bin/bash
# The rdma conformance suite on real verbs (rxe0 in the guest).
exec "$(dirname "$0")/../../rdma/ci-conformance.sh"
