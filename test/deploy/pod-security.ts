// The Pod Security Standards "restricted" profile (which includes "baseline"), as Pod Security
// Admission enforces it (Kubernetes 1.30+; https://kubernetes.io/docs/concepts/security/pod-security-standards/),
// checked over a pod spec. Each violation names the control and the field. Plus Bulwark's own
// hardening bar, which PSS does not require: read-only root file systems, resource requests
// and limits.

type Rec = Record<string, unknown>
const isRec = (v: unknown): v is Rec => typeof v === 'object' && v !== null && !Array.isArray(v)
const rec = (v: unknown): Rec => (isRec(v) ? v : {})

const BASELINE_CAPABILITIES = new Set(['AUDIT_WRITE', 'CHOWN', 'DAC_OVERRIDE', 'FOWNER', 'FSETID', 'KILL', 'MKNOD', 'NET_BIND_SERVICE', 'SETFCAP', 'SETGID', 'SETPCAP', 'SETUID', 'SYS_CHROOT'])
const SAFE_SYSCTLS = new Set([
  'kernel.shm_rmid_forced', 'net.ipv4.ip_local_port_range', 'net.ipv4.ip_unprivileged_port_start', 'net.ipv4.tcp_syncookies',
  'net.ipv4.ping_group_range', 'net.ipv4.ip_local_reserved_ports', 'net.ipv4.tcp_keepalive_time', 'net.ipv4.tcp_fin_timeout',
  'net.ipv4.tcp_keepalive_intvl', 'net.ipv4.tcp_keepalive_probes',
])
const SELINUX_TYPES = new Set(['', 'container_t', 'container_init_t', 'container_kvm_t', 'container_engine_t'])
const RESTRICTED_VOLUMES = new Set(['configMap', 'csi', 'downwardAPI', 'emptyDir', 'ephemeral', 'persistentVolumeClaim', 'projected', 'secret'])

/** Every container of a pod, with the field path it sits at. */
function containers(pod: Rec): { where: string; c: Rec }[] {
  const out: { where: string; c: Rec }[] = []
  for (const field of ['initContainers', 'containers', 'ephemeralContainers']) {
    const list = pod[field]
    if (Array.isArray(list)) list.forEach((c, i) => out.push({ where: `${field}[${i}](${String(rec(c).name)})`, c: rec(c) }))
  }
  return out
}

/** Violations of PSS baseline and restricted in a pod spec (and its pod template's annotations). */
export function restrictedViolations(pod: Rec, annotations: Record<string, string> = {}): string[] {
  const v: string[] = []
  const psc = rec(pod.securityContext)
  const all = containers(pod)

  // --- baseline ---
  for (const f of ['hostNetwork', 'hostPID', 'hostIPC']) if (pod[f] === true) v.push(`host namespaces: spec.${f} is true`)
  if (rec(psc.windowsOptions).hostProcess === true) v.push('HostProcess: spec.securityContext.windowsOptions.hostProcess')
  for (const vol of (pod.volumes as Rec[] | undefined) ?? []) if ('hostPath' in vol) v.push(`HostPath volumes: volume ${String(vol.name)}`)
  if (rec(psc.appArmorProfile).type === 'Unconfined') v.push('AppArmor: spec.securityContext.appArmorProfile is Unconfined')
  for (const [k, val] of Object.entries(annotations)) if (k.startsWith('container.apparmor.security.beta.kubernetes.io/') && val === 'unconfined') v.push(`AppArmor: annotation ${k}`)
  const podSe = rec(psc.seLinuxOptions)
  if (typeof podSe.type === 'string' && !SELINUX_TYPES.has(podSe.type)) v.push(`SELinux: spec.securityContext.seLinuxOptions.type ${podSe.type}`)
  if (podSe.user !== undefined || podSe.role !== undefined) v.push('SELinux: spec.securityContext.seLinuxOptions.user/role set')
  if (rec(psc.seccompProfile).type === 'Unconfined') v.push('seccomp: spec.securityContext.seccompProfile is Unconfined')
  for (const s of (psc.sysctls as Rec[] | undefined) ?? []) if (!SAFE_SYSCTLS.has(String(s.name))) v.push(`sysctls: ${String(s.name)} is not in the safe set`)

  for (const { where, c } of all) {
    const sc = rec(c.securityContext)
    if (sc.privileged === true) v.push(`privileged containers: ${where}.securityContext.privileged`)
    if (rec(sc.windowsOptions).hostProcess === true) v.push(`HostProcess: ${where}`)
    for (const p of (c.ports as Rec[] | undefined) ?? []) if (p.hostPort !== undefined && p.hostPort !== 0) v.push(`host ports: ${where} hostPort ${String(p.hostPort)}`)
    if (rec(sc.appArmorProfile).type === 'Unconfined') v.push(`AppArmor: ${where} Unconfined`)
    const se = rec(sc.seLinuxOptions)
    if (typeof se.type === 'string' && !SELINUX_TYPES.has(se.type)) v.push(`SELinux: ${where} type ${se.type}`)
    if (se.user !== undefined || se.role !== undefined) v.push(`SELinux: ${where} user/role set`)
    if (sc.procMount !== undefined && sc.procMount !== 'Default') v.push(`/proc mount type: ${where} ${String(sc.procMount)}`)
    if (rec(sc.seccompProfile).type === 'Unconfined') v.push(`seccomp: ${where} Unconfined`)
    const caps = rec(sc.capabilities)
    for (const cap of (caps.add as string[] | undefined) ?? []) if (!BASELINE_CAPABILITIES.has(cap)) v.push(`capabilities (baseline): ${where} adds ${cap}`)
  }

  // --- restricted ---
  for (const vol of (pod.volumes as Rec[] | undefined) ?? []) {
    const kinds = Object.keys(vol).filter((k) => k !== 'name')
    for (const k of kinds) if (!RESTRICTED_VOLUMES.has(k)) v.push(`volume types: volume ${String(vol.name)} is ${k}`)
  }
  const podNonRoot = psc.runAsNonRoot === true
  if (psc.runAsUser === 0) v.push('running as non-root user: spec.securityContext.runAsUser is 0')
  const podSeccomp = rec(psc.seccompProfile).type
  const podSeccompOk = podSeccomp === 'RuntimeDefault' || podSeccomp === 'Localhost'
  for (const { where, c } of all) {
    const sc = rec(c.securityContext)
    if (sc.allowPrivilegeEscalation !== false) v.push(`privilege escalation: ${where}.securityContext.allowPrivilegeEscalation must be false`)
    if (sc.runAsNonRoot === false || (!podNonRoot && sc.runAsNonRoot !== true)) v.push(`running as non-root: ${where} (set runAsNonRoot: true on the pod or the container)`)
    if (sc.runAsUser === 0) v.push(`running as non-root user: ${where}.securityContext.runAsUser is 0`)
    const seccomp = rec(sc.seccompProfile).type
    if (seccomp === undefined ? !podSeccompOk : seccomp !== 'RuntimeDefault' && seccomp !== 'Localhost') v.push(`seccomp: ${where} needs RuntimeDefault or Localhost (pod or container)`)
    const caps = rec(sc.capabilities)
    if (!((caps.drop as string[] | undefined) ?? []).includes('ALL')) v.push(`capabilities: ${where} must drop ALL`)
    for (const cap of (caps.add as string[] | undefined) ?? []) if (cap !== 'NET_BIND_SERVICE') v.push(`capabilities: ${where} adds ${cap} (only NET_BIND_SERVICE may be added)`)
  }
  return v
}

/** Bulwark's bar on top of PSS restricted: read-only root file systems, requests and limits. */
export function hardeningViolations(pod: Rec): string[] {
  const v: string[] = []
  for (const { where, c } of containers(pod)) {
    if (rec(c.securityContext).readOnlyRootFilesystem !== true) v.push(`${where}: readOnlyRootFilesystem must be true`)
    const res = rec(c.resources)
    for (const kind of ['requests', 'limits']) for (const r of ['cpu', 'memory']) if (rec(res[kind])[r] === undefined) v.push(`${where}: resources.${kind}.${r} missing`)
  }
  if (pod.hostUsers === true) v.push('spec.hostUsers is true')
  return v
}
