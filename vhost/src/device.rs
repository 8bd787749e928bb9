//! The vhost-user control plane of one connection: features, memory
//! table, vring setup, config space, in-flight areas. Runs on the
//! controller's listener thread; starts and stops queue workers on their
//! reactors.

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bdev::Bdev;
use reactor::ReactorHandle;
use vhost_user::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost_user::vhost_user::{
    Error as VuError, GpuBackend, Result as VuResult, VhostUserBackendReqHandlerMut,
};
use vhost_user::VhostUserMemoryRegionBase;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestRegionMmap};

use crate::inflight::InflightRegion;
use crate::mem::{GuestMem, Mapping};
use crate::virtio::{feat, Limits};
use crate::worker::{QueueCtl, QueueSetup, Worker};

/// Largest virtqueue accepted.
pub(crate) const MAX_QUEUE_SIZE: u16 = 1024;
/// Memory slots offered with CONFIGURE_MEM_SLOTS.
const MAX_MEM_SLOTS: u64 = 509;
/// How long stopping a queue may wait for its in-flight I/O.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What all connections of a controller share.
pub(crate) struct DeviceCtx {
    pub name: String,
    pub bdev: Arc<dyn Bdev>,
    pub limits: Arc<Limits>,
    pub reactors: ReactorHandle,
    /// Reactor index serving each queue.
    pub queue_reactor: Vec<usize>,
    /// Running queues (for `info`).
    pub running: Mutex<Vec<Option<Arc<QueueCtl>>>>,
}

#[derive(Default)]
struct Vring {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    addr_set: bool,
    base: u16,
    kick: Option<File>,
    started: bool,
    call: Option<File>,
    enabled: bool,
    running: Option<Arc<QueueCtl>>,
}

struct Region {
    gpa: u64,
    size: u64,
    user_addr: u64,
    /// The mapping, registered in the memory map; shared with the queues'
    /// snapshots, so it is unregistered and unmapped when the last of
    /// them lets go.
    map: Arc<Mapping>,
}

/// One frontend connection.
pub(crate) struct DeviceHandler {
    ctx: Arc<DeviceCtx>,
    owned: bool,
    acked: u64,
    protocol: u64,
    regions: Vec<Region>,
    mem: Option<Arc<GuestMem>>,
    vrings: Vec<Vring>,
    inflight: Option<Arc<InflightRegion>>,
}

fn io_err(msg: impl Into<String>) -> VuError {
    VuError::ReqHandlerError(std::io::Error::other(msg.into()))
}

impl DeviceHandler {
    pub fn new(ctx: Arc<DeviceCtx>) -> DeviceHandler {
        let n = ctx.limits.num_queues as usize;
        DeviceHandler {
            ctx,
            owned: false,
            acked: 0,
            protocol: 0,
            regions: Vec::new(),
            mem: None,
            vrings: (0..n).map(|_| Vring::default()).collect(),
            inflight: None,
        }
    }

    fn vring(&mut self, index: u32) -> VuResult<&mut Vring> {
        self.vrings
            .get_mut(index as usize)
            .ok_or(VuError::InvalidParam)
    }

    fn va_to_gpa(&self, va: u64) -> VuResult<u64> {
        self.regions
            .iter()
            .find(|r| va >= r.user_addr && va - r.user_addr < r.size)
            .map(|r| va - r.user_addr + r.gpa)
            .ok_or(VuError::InvalidParam)
    }

    fn event_idx(&self) -> bool {
        self.acked & feat::RING_EVENT_IDX != 0
    }

    fn tracking(&self) -> bool {
        self.protocol & VhostUserProtocolFeatures::INFLIGHT_SHMFD.bits() != 0
    }

    /// Starts queue `i` on its reactor if it is started, enabled, has
    /// addresses and memory.
    fn maybe_start(&mut self, i: usize) -> VuResult<()> {
        let event_idx = self.event_idx();
        let tracking = self.tracking();
        let v = &self.vrings[i];
        if v.running.is_some() || !v.started || !v.enabled || !v.addr_set {
            return Ok(());
        }
        let Some(mem) = self.mem.clone() else {
            return Ok(());
        };
        let mut q = Queue::new(MAX_QUEUE_SIZE).map_err(|e| io_err(e.to_string()))?;
        q.set_size(v.size);
        q.try_set_desc_table_address(GuestAddress(v.desc))
            .map_err(|_| VuError::InvalidParam)?;
        q.try_set_avail_ring_address(GuestAddress(v.avail))
            .map_err(|_| VuError::InvalidParam)?;
        q.try_set_used_ring_address(GuestAddress(v.used))
            .map_err(|_| VuError::InvalidParam)?;
        q.set_event_idx(event_idx);
        q.set_ready(true);
        if !q.is_valid(mem.mmap()) {
            tracing::warn!(ctrlr = %self.ctx.name, queue = i, "vring is not inside guest memory; not started");
            return Err(VuError::InvalidParam);
        }
        let used_idx = q
            .used_idx(mem.mmap(), std::sync::atomic::Ordering::Acquire)
            .map_err(|_| VuError::InvalidParam)?
            .0;
        let mut resubmit = Vec::new();
        let mut counter = 1;
        let mut next_avail = v.base;
        let mut inflight = None;
        if tracking {
            if let Some(r) = &self.inflight {
                if let Some(t) = r.queue(i as u16, v.size) {
                    counter = t.recover(used_idx, &mut resubmit);
                    next_avail = used_idx.wrapping_add(resubmit.len() as u16);
                    inflight = Some((Arc::clone(r), t));
                    if !resubmit.is_empty() {
                        tracing::info!(ctrlr = %self.ctx.name, queue = i, requests = resubmit.len(),
                            "resubmitting requests left in flight by the previous backend");
                    }
                }
            }
        }
        q.set_next_avail(next_avail);
        q.set_next_used(used_idx);
        let reactor = self.ctx.queue_reactor[i];
        let ctl = QueueCtl::new(i as u16, reactor);
        let call = match &v.call {
            Some(f) => Some(f.try_clone().map_err(VuError::ReqHandlerError)?),
            None => None,
        };
        let setup = QueueSetup {
            queue: q,
            mem,
            call,
            limits: Arc::clone(&self.ctx.limits),
            bdev: Arc::clone(&self.ctx.bdev),
            ctl: Arc::clone(&ctl),
            inflight,
            resubmit,
            counter,
        };
        let started = self
            .ctx
            .reactors
            .call(reactor, move || {
                Worker::start_on_reactor(setup).map_err(|e| e.to_string())
            })
            .map_err(|e| io_err(e.to_string()))?;
        started.map_err(io_err)?;
        self.vrings[i].running = Some(Arc::clone(&ctl));
        if let Some(slot) = self
            .ctx
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(i)
        {
            *slot = Some(ctl);
        }
        Ok(())
    }

    /// Stops queue `i` (completing what it has in flight); its base becomes
    /// where it stopped.
    fn stop(&mut self, i: usize) {
        let Some(ctl) = self.vrings[i].running.take() else {
            return;
        };
        if let Some(slot) = self
            .ctx
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(i)
        {
            *slot = None;
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            if let Some(f) = ctl.stop(Duration::from_millis(100)) {
                self.vrings[i].base = f.next_avail;
                return;
            }
            // Stopped reactors run no pollers: nothing more will complete.
            if self.ctx.reactors.send(ctl.reactor, || {}).is_err() || Instant::now() >= deadline {
                tracing::warn!(ctrlr = %self.ctx.name, queue = i, "queue did not drain; abandoning it");
                return;
            }
        }
    }

    /// Stops every queue and forgets the connection state.
    pub fn shutdown(&mut self) {
        for i in 0..self.vrings.len() {
            self.stop(i);
        }
        for v in &mut self.vrings {
            *v = Vring::default();
        }
        self.mem = None;
        self.regions.clear();
        self.inflight = None;
        self.acked = 0;
        self.protocol = 0;
        self.owned = false;
    }

    /// Publishes the current memory table to running queues.
    fn publish_mem(&mut self) -> VuResult<()> {
        self.regions.sort_by_key(|r| r.gpa);
        let maps = self.regions.iter().map(|r| Arc::clone(&r.map)).collect();
        let mem = Arc::new(GuestMem::new(maps).map_err(|e| io_err(e.to_string()))?);
        for v in &self.vrings {
            if let Some(ctl) = &v.running {
                if !ctl.set_mem(Arc::clone(&mem)) {
                    tracing::warn!(ctrlr = %self.ctx.name, queue = ctl.index, "queue did not take the new memory table");
                }
            }
        }
        self.mem = Some(mem);
        for i in 0..self.vrings.len() {
            self.maybe_start(i)?;
        }
        Ok(())
    }

    fn map_region(r: &VhostUserMemoryRegion, file: File) -> VuResult<Region> {
        let mmap = r.mmap_region::<()>(file).inspect_err(|e| {
            let (gpa, size, offset) = ({ r.guest_phys_addr }, { r.memory_size }, { r.mmap_offset });
            tracing::warn!(gpa, size, offset, error = %e, "cannot map a memory region")
        })?;
        let region = GuestRegionMmap::new(mmap, GuestAddress(r.guest_phys_addr))
            .ok_or(VuError::InvalidParam)?;
        Ok(Region {
            gpa: r.guest_phys_addr,
            size: r.memory_size,
            user_addr: r.user_addr,
            map: Arc::new(Mapping::new(region)),
        })
    }
}

impl VhostUserBackendReqHandlerMut for DeviceHandler {
    fn set_owner(&mut self) -> VuResult<()> {
        if self.owned {
            return Err(VuError::InvalidOperation("already owned"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        let protocol = self.protocol;
        self.shutdown();
        self.protocol = protocol;
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        for i in 0..self.vrings.len() {
            self.stop(i);
            let v = &mut self.vrings[i];
            *v = Vring::default();
        }
        self.acked = 0;
        Ok(())
    }

    fn get_features(&mut self) -> VuResult<u64> {
        Ok(self.ctx.limits.features())
    }

    fn set_features(&mut self, features: u64) -> VuResult<()> {
        if features & !self.ctx.limits.features() != 0 {
            return Err(VuError::InvalidParam);
        }
        self.acked = features;
        // Without PROTOCOL_FEATURES rings are enabled from the start.
        if features & feat::PROTOCOL_FEATURES == 0 {
            for i in 0..self.vrings.len() {
                self.vrings[i].enabled = true;
                self.maybe_start(i)?;
            }
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        let mut regions = Vec::with_capacity(ctx.len());
        for (r, f) in ctx.iter().zip(files) {
            regions.push(Self::map_region(r, f)?);
        }
        self.regions = regions;
        self.publish_mem()?;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        let v = self.vring(index)?;
        if v.running.is_some() || num == 0 || num > MAX_QUEUE_SIZE as u32 || !num.is_power_of_two()
        {
            return Err(VuError::InvalidParam);
        }
        v.size = num as u16;
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        let (d, u, a) = (
            self.va_to_gpa(descriptor)?,
            self.va_to_gpa(used)?,
            self.va_to_gpa(available)?,
        );
        let v = self.vring(index)?;
        if v.running.is_some() {
            return Err(VuError::InvalidOperation("vring is running"));
        }
        v.desc = d;
        v.used = u;
        v.avail = a;
        v.addr_set = true;
        self.maybe_start(index as usize)
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        let v = self.vring(index)?;
        if v.running.is_some() {
            return Err(VuError::InvalidOperation("vring is running"));
        }
        v.base = base as u16;
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        self.vring(index)?;
        self.stop(index as usize);
        let v = &mut self.vrings[index as usize];
        v.started = false;
        v.kick = None;
        v.call = None;
        Ok(VhostUserVringState::new(index, v.base as u32))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let v = self.vring(index as u32)?;
        v.kick = fd;
        v.started = true;
        self.maybe_start(index as usize)
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let v = self.vring(index as u32)?;
        if let Some(ctl) = &v.running {
            let dup = match &fd {
                Some(f) => Some(f.try_clone().map_err(VuError::ReqHandlerError)?),
                None => None,
            };
            if !ctl.set_call(dup) {
                tracing::warn!(queue = index, "queue did not take the new call fd");
            }
        }
        v.call = fd;
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> VuResult<()> {
        self.vring(index as u32)?;
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
            | VhostUserProtocolFeatures::RESET_DEVICE
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
    }

    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        self.protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(self.vrings.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        self.vring(index)?;
        if enable {
            self.vrings[index as usize].enabled = true;
            self.maybe_start(index as usize)
        } else {
            self.stop(index as usize);
            self.vrings[index as usize].enabled = false;
            Ok(())
        }
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VuResult<Vec<u8>> {
        let space = self.ctx.limits.config_space();
        let mut out = vec![0u8; size as usize];
        let start = (offset as usize).min(space.len());
        let end = (offset as usize)
            .saturating_add(size as usize)
            .min(space.len());
        out[..end - start].copy_from_slice(&space[start..end]);
        Ok(out)
    }

    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VuResult<()> {
        // Nothing in our config space is writable (no CONFIG_WCE).
        Ok(())
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VuResult<()> {
        Err(VuError::InvalidOperation("not a GPU"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        Err(VuError::InvalidOperation("no shared objects"))
    }

    fn get_inflight_fd(&mut self, msg: &VhostUserInflight) -> VuResult<(VhostUserInflight, File)> {
        if msg.num_queues == 0
            || msg.num_queues > 256
            || msg.queue_size == 0
            || msg.queue_size > MAX_QUEUE_SIZE
        {
            return Err(VuError::InvalidParam);
        }
        let r = InflightRegion::create(msg.num_queues, msg.queue_size)
            .map_err(VuError::ReqHandlerError)?;
        let file = r.file().try_clone().map_err(VuError::ReqHandlerError)?;
        let reply = VhostUserInflight::new(r.size() as u64, 0, r.num_queues(), r.queue_size());
        self.inflight = Some(Arc::new(r));
        Ok((reply, file))
    }

    fn set_inflight_fd(&mut self, msg: &VhostUserInflight, file: File) -> VuResult<()> {
        if msg.queue_size > MAX_QUEUE_SIZE || msg.num_queues > 256 {
            return Err(VuError::InvalidParam);
        }
        let size = usize::try_from(msg.mmap_size).map_err(|_| VuError::InvalidParam)?;
        let r = InflightRegion::map(file, msg.mmap_offset, size, msg.num_queues, msg.queue_size)
            .map_err(VuError::ReqHandlerError)?;
        self.inflight = Some(Arc::new(r));
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        Ok(MAX_MEM_SLOTS)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        _postcopy: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        if self.regions.len() as u64 >= MAX_MEM_SLOTS {
            return Err(VuError::InvalidOperation("too many memory regions"));
        }
        let (gpa, size) = ({ region.guest_phys_addr }, { region.memory_size });
        let end = gpa.checked_add(size).ok_or(VuError::InvalidParam)?;
        if self
            .regions
            .iter()
            .any(|r| gpa < r.gpa + r.size && r.gpa < end)
        {
            return Err(VuError::InvalidParam);
        }
        let r = Self::map_region(region, fd)?;
        let added = Arc::clone(&r.map);
        self.regions.push(r);
        if let Err(e) = self.publish_mem() {
            self.regions.retain(|r| !Arc::ptr_eq(&r.map, &added));
            return Err(e);
        }
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        let Some(pos) = self
            .regions
            .iter()
            .position(|r| r.gpa == region.guest_phys_addr && r.size == region.memory_size)
        else {
            return Err(VuError::InvalidParam);
        };
        self.regions.remove(pos);
        self.publish_mem()
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VuResult<Option<File>> {
        Err(VuError::InvalidOperation("no device state transfer"))
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        Err(VuError::InvalidOperation("no device state transfer"))
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        Err(VuError::InvalidOperation("no shared memory regions"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VuResult<()> {
        Err(VuError::InvalidOperation("no dirty logging"))
    }
}
