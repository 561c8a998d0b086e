"""cffi API-mode build script for agent._libbpf: the system libbpf plus the
edgewarden ABI header, whose structs and constants cffi reads straight from
native/include/edgewarden_abi.h so no layout is written twice."""

import re
from pathlib import Path

from cffi import FFI

NATIVE_DIR = Path(__file__).resolve().parent
ABI_HEADER = NATIVE_DIR / "include" / "edgewarden_abi.h"


def abi_declarations(header_text: str) -> str:
    """The part of the ABI header between the ABI-BEGIN/ABI-END markers."""
    match = re.search(r"/\* ABI-BEGIN \*/(.*?)/\* ABI-END \*/", header_text, re.S)
    if not match:
        raise RuntimeError(f"{ABI_HEADER}: ABI-BEGIN/ABI-END markers not found")
    return match.group(1)


LIBBPF_DECLARATIONS = """
struct bpf_object;
struct bpf_program;
struct bpf_map;

struct bpf_object *bpf_object__open_file(const char *path, const void *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
struct bpf_program *bpf_object__find_program_by_name(const struct bpf_object *obj, const char *name);
struct bpf_map *bpf_object__find_map_by_name(const struct bpf_object *obj, const char *name);
struct bpf_map *bpf_object__next_map(const struct bpf_object *obj, const struct bpf_map *map);
int bpf_program__fd(const struct bpf_program *prog);
int bpf_program__pin(struct bpf_program *prog, const char *path);
const char *bpf_map__name(const struct bpf_map *map);
int bpf_map__fd(const struct bpf_map *map);
int bpf_map__set_pin_path(struct bpf_map *map, const char *path);
int bpf_map__set_max_entries(struct bpf_map *map, __u32 max_entries);
struct bpf_map *bpf_map__inner_map(struct bpf_map *map);
int bpf_map__set_inner_map_fd(struct bpf_map *map, int fd);
int bpf_map__type(const struct bpf_map *map);
__u32 bpf_map__key_size(const struct bpf_map *map);
__u32 bpf_map__value_size(const struct bpf_map *map);
__u32 bpf_map__map_flags(const struct bpf_map *map);
__u32 bpf_map__max_entries(const struct bpf_map *map);
int bpf_map__unpin(struct bpf_map *map, const char *path);

int bpf_map_update_elem(int fd, const void *key, const void *value, __u64 flags);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);
int bpf_obj_pin(int fd, const char *pathname);
int bpf_obj_get(const char *pathname);
int bpf_prog_get_fd_by_id(__u32 id);
int bpf_map_get_fd_by_id(__u32 id);
int bpf_xdp_attach(int ifindex, int prog_fd, __u32 flags, const void *opts);
int bpf_xdp_detach(int ifindex, __u32 flags, const void *opts);
int libbpf_num_possible_cpus(void);

/* Ring buffers (the evidence samples): the callback is Python, through
 * cffi's extern "Python" (agent.evidence.ring). */
struct ring_buffer;
typedef int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size);
struct ring_buffer *ring_buffer__new(int map_fd, ring_buffer_sample_fn sample_cb, void *ctx, const void *opts);
void ring_buffer__free(struct ring_buffer *rb);
int ring_buffer__poll(struct ring_buffer *rb, int timeout_ms);
int ring_buffer__consume(struct ring_buffer *rb);
int ring_buffer__epoll_fd(const struct ring_buffer *rb);
extern "Python" int ew_ring_sample(void *ctx, void *data, size_t size);

#define XDP_FLAGS_UPDATE_IF_NOEXIST 1
#define XDP_FLAGS_SKB_MODE 2
#define XDP_FLAGS_DRV_MODE 4
#define XDP_FLAGS_REPLACE 16
#define XDP_ABORTED 0
#define XDP_DROP 1
#define XDP_PASS 2
#define XDP_TX 3
#define XDP_REDIRECT 4
#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_LPM_TRIE 11
#define BPF_MAP_TYPE_ARRAY_OF_MAPS 12
#define BPF_F_NO_PREALLOC 1
#define BPF_ANY 0
#define BPF_NOEXIST 1
#define BPF_EXIST 2

/* Wrappers defined below in C: they hide libbpf's opts structs, whose sizes
 * differ between libbpf versions. */
int ew_xdp_query(int ifindex, __u32 *prog_id, __u32 *drv_prog_id, __u32 *skb_prog_id, __u8 *attach_mode);
int ew_xdp_attach_replacing(int ifindex, int prog_fd, __u32 flags, int old_prog_fd);
int ew_prog_test_run(int prog_fd, const void *data, __u32 size, void *data_out, __u32 *size_out,
                     __u32 repeat, __u32 *retval, __u32 *duration_ns);
int ew_prog_run_live(int prog_fd, const void *data, __u32 size, __u32 ifindex, __u32 repeat, __u32 batch_size);
int ew_prog_info(int prog_fd, __u32 *id, char *name, __u32 name_size, __u32 *type);
int ew_prog_map_ids(int prog_fd, __u32 *ids, __u32 *count);
int ew_map_info(int map_fd, __u32 *id, char *name, __u32 name_size, __u32 *type,
                __u32 *key_size, __u32 *value_size, __u32 *max_entries);
int ew_map_create(__u32 map_type, const char *name, __u32 key_size, __u32 value_size, __u32 max_entries,
                  __u32 map_flags);
int ew_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values, __u32 *count);
int ew_map_update_batch(int fd, const void *keys, const void *values, __u32 *count, __u64 elem_flags);
int ew_map_delete_batch(int fd, const void *keys, __u32 *count);
void ew_capture_libbpf_log(int enabled);
const char *ew_libbpf_log(void);
void ew_clear_libbpf_log(void);
int ew_kernel_has_function(const char *name);
int ew_object_kfuncs(const char *path, char *out, __u32 size);
"""

WRAPPERS = r"""
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <linux/if_link.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <dirent.h>
#include "edgewarden_abi.h"

int ew_xdp_query(int ifindex, __u32 *prog_id, __u32 *drv_prog_id, __u32 *skb_prog_id, __u8 *attach_mode)
{
    LIBBPF_OPTS(bpf_xdp_query_opts, opts);
    int err = bpf_xdp_query(ifindex, 0, &opts);

    if (err)
        return err;
    *prog_id = opts.prog_id;
    *drv_prog_id = opts.drv_prog_id;
    *skb_prog_id = opts.skb_prog_id;
    *attach_mode = opts.attach_mode;
    return 0;
}

int ew_xdp_attach_replacing(int ifindex, int prog_fd, __u32 flags, int old_prog_fd)
{
    LIBBPF_OPTS(bpf_xdp_attach_opts, opts, .old_prog_fd = old_prog_fd);
    return bpf_xdp_attach(ifindex, prog_fd, flags | XDP_FLAGS_REPLACE, &opts);
}

int ew_prog_test_run(int prog_fd, const void *data, __u32 size, void *data_out, __u32 *size_out,
                     __u32 repeat, __u32 *retval, __u32 *duration_ns)
{
    LIBBPF_OPTS(bpf_test_run_opts, opts,
        .data_in = data, .data_size_in = size,
        .data_out = data_out, .data_size_out = data_out ? *size_out : 0,
        .repeat = repeat);
    int err = bpf_prog_test_run_opts(prog_fd, &opts);

    if (err)
        return err;
    *retval = opts.retval;
    *duration_ns = opts.duration;
    if (data_out)
        *size_out = opts.data_size_out;
    return 0;
}

/* BPF_PROG_RUN in live-frames mode: the frames the program returns XDP_TX
 * for are transmitted out of `ifindex` (in the caller's network namespace). */
int ew_prog_run_live(int prog_fd, const void *data, __u32 size, __u32 ifindex, __u32 repeat, __u32 batch_size)
{
    struct xdp_md ctx;

    memset(&ctx, 0, sizeof(ctx));
    ctx.data_end = size;
    ctx.ingress_ifindex = ifindex;
    LIBBPF_OPTS(bpf_test_run_opts, opts,
        .data_in = data, .data_size_in = size,
        .ctx_in = &ctx, .ctx_size_in = sizeof(ctx),
        .repeat = repeat, .flags = BPF_F_TEST_XDP_LIVE_FRAMES, .batch_size = batch_size);
    return bpf_prog_test_run_opts(prog_fd, &opts);
}

int ew_prog_info(int prog_fd, __u32 *id, char *name, __u32 name_size, __u32 *type)
{
    struct bpf_prog_info info;
    __u32 len = sizeof(info);
    int err;

    memset(&info, 0, sizeof(info));
    err = bpf_obj_get_info_by_fd(prog_fd, &info, &len);
    if (err)
        return err;
    *id = info.id;
    *type = info.type;
    snprintf(name, name_size, "%s", info.name);
    return 0;
}

/* The ids of the maps a program uses: up to *count into ids; *count becomes how many it uses. */
int ew_prog_map_ids(int prog_fd, __u32 *ids, __u32 *count)
{
    struct bpf_prog_info info;
    __u32 len = sizeof(info);
    int err;

    memset(&info, 0, sizeof(info));
    info.nr_map_ids = *count;
    info.map_ids = (__u64)(unsigned long)ids;
    err = bpf_obj_get_info_by_fd(prog_fd, &info, &len);
    if (err)
        return err;
    *count = info.nr_map_ids;
    return 0;
}

int ew_map_info(int map_fd, __u32 *id, char *name, __u32 name_size, __u32 *type,
                __u32 *key_size, __u32 *value_size, __u32 *max_entries)
{
    struct bpf_map_info info;
    __u32 len = sizeof(info);
    int err;

    memset(&info, 0, sizeof(info));
    err = bpf_obj_get_info_by_fd(map_fd, &info, &len);
    if (err)
        return err;
    *id = info.id;
    *type = info.type;
    *key_size = info.key_size;
    *value_size = info.value_size;
    *max_entries = info.max_entries;
    snprintf(name, name_size, "%s", info.name);
    return 0;
}

int ew_map_create(__u32 map_type, const char *name, __u32 key_size, __u32 value_size, __u32 max_entries,
                  __u32 map_flags)
{
    LIBBPF_OPTS(bpf_map_create_opts, opts, .map_flags = map_flags);
    return bpf_map_create(map_type, name, key_size, value_size, max_entries, &opts);
}

int ew_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values, __u32 *count)
{
    LIBBPF_OPTS(bpf_map_batch_opts, opts);
    return bpf_map_lookup_batch(fd, in_batch, out_batch, keys, values, count, &opts);
}

int ew_map_update_batch(int fd, const void *keys, const void *values, __u32 *count, __u64 elem_flags)
{
    LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = elem_flags);
    return bpf_map_update_batch(fd, keys, values, count, &opts);
}

int ew_map_delete_batch(int fd, const void *keys, __u32 *count)
{
    LIBBPF_OPTS(bpf_map_batch_opts, opts);
    return bpf_map_delete_batch(fd, keys, count, &opts);
}

/* libbpf reports verifier logs and load errors through a print callback;
 * keep the tail of it so a failed load can say why. */
#define EW_LOG_SIZE 65536
static char ew_log[EW_LOG_SIZE];
static size_t ew_log_len;

static int ew_log_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
    char line[4096];
    int n;

    if (level == LIBBPF_DEBUG)
        return 0;
    n = vsnprintf(line, sizeof(line), fmt, args);
    if (n <= 0)
        return 0;
    if ((size_t)n >= sizeof(line))
        n = sizeof(line) - 1;
    if (ew_log_len + n >= EW_LOG_SIZE) {
        /* keep the most recent half: the end of a verifier log says why */
        size_t keep = EW_LOG_SIZE / 2;
        memmove(ew_log, ew_log + ew_log_len - keep, keep);
        ew_log_len = keep;
    }
    memcpy(ew_log + ew_log_len, line, n);
    ew_log_len += n;
    ew_log[ew_log_len] = 0;
    return 0;
}

void ew_capture_libbpf_log(int enabled)
{
    libbpf_set_print(enabled ? ew_log_print : NULL);
}

const char *ew_libbpf_log(void)
{
    return ew_log;
}

void ew_clear_libbpf_log(void)
{
    ew_log_len = 0;
    ew_log[0] = 0;
}

/* Kernel functions (kfuncs) by BTF, as libbpf resolves them: 1 if vmlinux
 * has a function `name`, 2 if a loaded module has, 0 if none, -errno
 * without BTF. (Module BTFs are read from /sys/kernel/btf, which needs no
 * capability; libbpf enumerates them by id, which needs CAP_SYS_ADMIN.) */
int ew_kernel_has_function(const char *name)
{
    struct btf *vmlinux = btf__load_vmlinux_btf();
    struct dirent *entry;
    DIR *dir;
    int found;

    if (!vmlinux)
        return -(errno ? errno : ENOENT);
    found = btf__find_by_name_kind(vmlinux, name, BTF_KIND_FUNC) > 0;
    dir = found ? NULL : opendir("/sys/kernel/btf");
    while (dir && !found && (entry = readdir(dir)) != NULL) {
        struct btf *module;

        if (entry->d_name[0] == '.' || strcmp(entry->d_name, "vmlinux") == 0)
            continue;
        module = btf__load_module_btf(entry->d_name, vmlinux);
        if (!module)
            continue;
        found = btf__find_by_name_kind(module, name, BTF_KIND_FUNC) > 0 ? 2 : 0;
        btf__free(module);
    }
    if (dir)
        closedir(dir);
    btf__free(vmlinux);
    return found;
}

/* The kernel functions (extern functions in its BTF) a BPF object file
 * calls, one name per line into `out`; the count, or -errno. Read from the
 * file: bpf_object__open rewrites the externs' BTF. */
int ew_object_kfuncs(const char *path, char *out, __u32 size)
{
    struct btf *btf = btf__parse_elf(path, NULL);
    __u32 id, count, used = 0;
    int found = 0;

    if (!btf)
        return -(errno ? errno : EINVAL);
    if (size)
        out[0] = 0;
    count = btf__type_cnt(btf);
    for (id = 1; id < count; id++) {
        const struct btf_type *t = btf__type_by_id(btf, id);
        int n;

        if (!btf_is_func(t) || btf_vlen(t) != BTF_FUNC_EXTERN)
            continue;
        n = snprintf(out + used, size - used, "%s\n", btf__name_by_offset(btf, t->name_off));
        if (n < 0 || (__u32)n >= size - used) {
            btf__free(btf);
            return -ENOSPC;
        }
        used += n;
        found++;
    }
    btf__free(btf);
    return found;
}
"""

TYPEDEFS = """
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef unsigned long long __u64;
struct bpf_spin_lock { __u32 val; };
"""

ffibuilder = FFI()
ffibuilder.cdef(TYPEDEFS + abi_declarations(ABI_HEADER.read_text()) + LIBBPF_DECLARATIONS)
ffibuilder.set_source(
    "agent._libbpf",
    WRAPPERS,
    libraries=["bpf"],
    include_dirs=[str(NATIVE_DIR / "include")],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
