#!/bin/bash
# A real QEMU guest on `strata serve` over vhost-user-blk: size, serial,
# queues, fio crc32c verify, blkdiscard (-z), and kill -9 + restart of the
# daemon under fio with reconnect=1.
exec "$(dirname "$0")/../../vhost/tests/qemu-guest.sh" all
