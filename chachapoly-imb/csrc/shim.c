/*
 * The few calls twilld makes into Intel's intel-ipsec-mb for ChaCha20-Poly1305.
 *
 * The library is opened with dlopen at run time, so one twilld binary runs everywhere: with the
 * library where it is installed, with ring where it is not. Only its header is needed to build:
 * the job structures below are laid out by the compiler from that header, and the library
 * found at run time must be the version the header describes (checked in twill_imb_load).
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <intel-ipsec-mb.h>

static IMB_MGR *(*imb_alloc)(uint64_t);
static void (*imb_free)(IMB_MGR *);
static void (*imb_init_auto)(IMB_MGR *, IMB_ARCH *);
static int loaded;

/* Returns the architecture the library picked for this CPU (an IMB_ARCH), or -1 with a message
 * in err. Not thread-safe: the Rust side calls it once. */
int twill_imb_load(char *err, size_t err_len)
{
        void *lib = dlopen("libIPSec_MB.so.1", RTLD_NOW | RTLD_LOCAL);
        if (lib == NULL) {
                snprintf(err, err_len, "%s", dlerror());
                return -1;
        }
        unsigned (*version)(void) = (unsigned (*)(void))dlsym(lib, "imb_get_version");
        imb_alloc = (IMB_MGR * (*)(uint64_t)) dlsym(lib, "alloc_mb_mgr");
        imb_free = (void (*)(IMB_MGR *))dlsym(lib, "free_mb_mgr");
        imb_init_auto = (void (*)(IMB_MGR *, IMB_ARCH *))dlsym(lib, "init_mb_mgr_auto");
        if (version == NULL || imb_alloc == NULL || imb_free == NULL || imb_init_auto == NULL) {
                snprintf(err, err_len, "libIPSec_MB.so.1 lacks alloc_mb_mgr, free_mb_mgr, "
                                       "init_mb_mgr_auto or imb_get_version");
                dlclose(lib);
                return -1;
        }
        /* The job and manager structures change between minor versions. */
        if ((version() >> 8) != (IMB_VERSION_NUM >> 8)) {
                unsigned v = version();
                snprintf(err, err_len, "libIPSec_MB.so.1 is version %u.%u.%u, twilld was built against %s",
                         v >> 16, (v >> 8) & 0xff, v & 0xff, IMB_VERSION_STR);
                dlclose(lib);
                return -1;
        }
        IMB_MGR *m = imb_alloc(0);
        if (m == NULL) {
                snprintf(err, err_len, "alloc_mb_mgr failed");
                return -1;
        }
        IMB_ARCH arch = IMB_ARCH_NONE;
        imb_init_auto(m, &arch);
        imb_free(m);
        loaded = 1;
        return (int)arch;
}

const char *twill_imb_version(void)
{
        return IMB_VERSION_STR;
}

int twill_imb_arch_avx512(void)
{
        return IMB_ARCH_AVX512;
}

/* A manager for the calling thread (a manager is not thread-safe); NULL on failure. */
void *twill_imb_mgr_new(void)
{
        if (!loaded)
                return NULL;
        IMB_MGR *m = imb_alloc(0);
        if (m == NULL)
                return NULL;
        IMB_ARCH arch = IMB_ARCH_NONE;
        imb_init_auto(m, &arch);
        return m;
}

void twill_imb_mgr_free(void *m)
{
        if (loaded && m != NULL)
                imb_free((IMB_MGR *)m);
}

/* Seals (encrypt != 0) or opens data[0..len] in place with an empty AAD; writes the tag the data
 * carries (sealing) or the tag computed over the ciphertext (opening: the caller compares it with
 * the received one). Returns 0, or the job's status. */
int twill_imb_chachapoly(void *mgr, int encrypt, const uint8_t key[32], const uint8_t nonce[12],
                         uint8_t *data, uint64_t len, uint8_t tag[16])
{
        IMB_MGR *m = (IMB_MGR *)mgr;
        IMB_JOB *job = IMB_GET_NEXT_JOB(m);
        job->cipher_direction = encrypt ? IMB_DIR_ENCRYPT : IMB_DIR_DECRYPT;
        job->chain_order = encrypt ? IMB_ORDER_CIPHER_HASH : IMB_ORDER_HASH_CIPHER;
        job->cipher_mode = IMB_CIPHER_CHACHA20_POLY1305;
        job->hash_alg = IMB_AUTH_CHACHA20_POLY1305;
        job->enc_keys = key;
        job->dec_keys = key;
        job->key_len_in_bytes = 32;
        job->src = data;
        job->dst = data;
        job->cipher_start_src_offset_in_bytes = 0;
        job->msg_len_to_cipher_in_bytes = len;
        job->hash_start_src_offset_in_bytes = 0;
        job->msg_len_to_hash_in_bytes = len;
        job->iv = nonce;
        job->iv_len_in_bytes = 12;
        job->auth_tag_output = tag;
        job->auth_tag_output_len_in_bytes = 16;
        job->u.CHACHA20_POLY1305.aad = NULL;
        job->u.CHACHA20_POLY1305.aad_len_in_bytes = 0;
        /* One job at a time: whatever completes is this job (the manager holds no other). */
        IMB_JOB *done = IMB_SUBMIT_JOB(m);
        if (done == NULL)
                done = IMB_FLUSH_JOB(m);
        if (done == NULL)
                return -1;
        return done->status == IMB_STATUS_COMPLETED ? 0 : (int)done->status;
}
