#!/bin/bash
# The VM harness itself: rxe on one and two NICs, kernel SRP modules, a
# vhost-user-blk guest with fio verify, time-outs and cleanup.
exec "$(dirname "$0")/../vm/selftest"
