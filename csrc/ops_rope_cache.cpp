// Torch glue of rotary_embedding, reshape_and_cache and fused_qk_norm_rope_cache.
#include <initializer_list>
#include <utility>

#include "glue.h"
#include "ops.h"

namespace atom {

namespace {

using NamedTensors = std::initializer_list<std::pair<const at::Tensor*, const char*>>;

// x ([T, H * head_size] or [T, H, head_size]) as a [T, H, head_size] tensor with a contiguous
// last dim: a view of x when its layout allows (e.g. q/k as strided slices of a fused qkv
// output), else a contiguous copy that the caller copies back (`copied`).
at::Tensor heads_of(const at::Tensor& x, int64_t tokens, int64_t head_size, const char* name,
                    bool& copied) {
  ATOM_CHECK_VALUE(x.dim() == 2 || x.dim() == 3, "atom: ", name,
                   " must be [T, H * head_size] or [T, H, head_size], got shape ", x.sizes());
  ATOM_CHECK_VALUE(x.size(0) == tokens, "atom: ", name, " has ", x.size(0),
                   " tokens but positions has ", tokens);
  const int64_t features = x.dim() == 2 ? x.size(1) : x.size(1) * x.size(2);
  ATOM_CHECK_VALUE(head_size > 0 && features % head_size == 0, "atom: ", name, " has ",
                   features, " features per token, not a multiple of head_size ", head_size);
  const int64_t heads = features / head_size;
  copied = false;
  if (x.dim() == 3 && x.size(2) == head_size && heads_contiguous_inner(x)) return x;
  if (x.dim() == 2 && (x.size(1) <= 1 || x.stride(1) == 1)) {
    return x.view({tokens, heads, head_size});
  }
  copied = true;
  return x.contiguous().view({tokens, heads, head_size});
}

// A read-only [T, H, D] input with a contiguous last dim (copied if it has none).
at::Tensor readable_heads(const at::Tensor& x, const char* name) {
  check_dim(x, name, 3);
  return heads_contiguous_inner(x) ? x : x.contiguous();
}

void check_activation_dtypes(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                             const char* b_name) {
  float_dtype(a, a_name);
  ATOM_CHECK_VALUE(a.scalar_type() == b.scalar_type(), "atom: ", a_name, " is ",
                   a.scalar_type(), " but ", b_name, " is ", b.scalar_type());
}

// Both caches [num_blocks, block_size, heads, head_size] matching `heads`/`head_size`, with one
// dtype that is the activations' or fp8.
void check_caches(const PagedCacheView& kc, const PagedCacheView& vc, int64_t heads,
                  int64_t k_head_size, int64_t v_head_size, DType dtype) {
  ATOM_CHECK_VALUE(kc.heads == heads && kc.head_size == k_head_size, "atom: key_cache has ",
                   kc.heads, " heads of ", kc.head_size, " but key has ", heads, " of ",
                   k_head_size);
  ATOM_CHECK_VALUE(vc.heads == heads && vc.head_size == v_head_size, "atom: value_cache has ",
                   vc.heads, " heads of ", vc.head_size, " but value has ", heads, " of ",
                   v_head_size);
  ATOM_CHECK_VALUE(kc.num_blocks == vc.num_blocks && kc.block_size == vc.block_size,
                   "atom: key_cache has ", kc.num_blocks, " blocks of ", kc.block_size,
                   " but value_cache has ", vc.num_blocks, " of ", vc.block_size);
  ATOM_CHECK_VALUE(kc.dtype == vc.dtype, "atom: key_cache and value_cache dtypes differ");
  ATOM_CHECK_VALUE(kc.dtype == dtype || kc.dtype == DType::kFloat8E4M3FN ||
                        kc.dtype == DType::kFloat8E4M3FNUZ,
                   "atom: the cache must have the activations' dtype or be fp8 e4m3");
}

}  // namespace

void rotary_embedding(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                      int64_t head_size, const at::Tensor& cos_sin_cache, bool is_neox) {
  at::Tensor pos_holder, table_holder;
  const IndexView pos = index_view(positions, "positions", pos_holder);
  check_activation_dtypes(query, "query", key, "key");
  check_device(key, "key", query, "query");
  check_device(positions, "positions", query, "query");
  check_device(cos_sin_cache, "cos_sin_cache", query, "query");
  bool q_copied = false, k_copied = false;
  at::Tensor q = heads_of(query, pos.count, head_size, "query", q_copied);
  at::Tensor k = heads_of(key, pos.count, head_size, "key", k_copied);
  const RotaryParams p{pos,           heads_view(q),
                       heads_view(k), cos_sin_view(cos_sin_cache, head_size, table_holder),
                       pos.count,     to_dtype(query, "query"),
                       is_neox};
  launch(query, p, cpu::rotary_embedding, ATOM_GPU_FN(rotary_embedding));
  if (q_copied) query.copy_(q.view(query.sizes()));
  if (k_copied) key.copy_(k.view(key.sizes()));
}

void reshape_and_cache(const at::Tensor& key, const at::Tensor& value, at::Tensor& key_cache,
                       at::Tensor& value_cache, const at::Tensor& slot_mapping,
                       const std::optional<at::Tensor>& k_scale,
                       const std::optional<at::Tensor>& v_scale) {
  at::Tensor slot_holder, k_scale_holder, v_scale_holder;
  const IndexView slots = index_view(slot_mapping, "slot_mapping", slot_holder);
  check_activation_dtypes(key, "key", value, "value");
  for (const auto& [t, name] : NamedTensors{{&value, "value"},
                                             {&key_cache, "key_cache"},
                                             {&value_cache, "value_cache"},
                                             {&slot_mapping, "slot_mapping"}}) {
    check_device(*t, name, key, "key");
  }
  const at::Tensor k = readable_heads(key, "key"), v = readable_heads(value, "value");
  ATOM_CHECK_VALUE(k.size(1) == v.size(1), "atom: key has ", k.size(1), " heads but value has ",
                   v.size(1));
  ATOM_CHECK_VALUE(slots.count <= k.size(0) && slots.count <= v.size(0), "atom: slot_mapping has ",
                   slots.count, " tokens but key has ", k.size(0), " and value ", v.size(0));
  const PagedCacheView kc = cache_view(key_cache, "key_cache", k_scale, k_scale_holder);
  const PagedCacheView vc = cache_view(value_cache, "value_cache", v_scale, v_scale_holder);
  const DType dtype = to_dtype(key, "key");
  check_caches(kc, vc, k.size(1), k.size(2), v.size(2), dtype);
  const CacheWriteParams p{heads_view(k), heads_view(v), kc, vc, slots, dtype};
  launch(key, p, cpu::reshape_and_cache, ATOM_GPU_FN(reshape_and_cache));
}

void fused_qk_norm_rope_cache(at::Tensor& q, at::Tensor& k, const at::Tensor& v,
                              const std::optional<at::Tensor>& q_norm_weight,
                              const std::optional<at::Tensor>& k_norm_weight, double eps,
                              const at::Tensor& positions, const at::Tensor& cos_sin_cache,
                              bool is_neox, at::Tensor& key_cache, at::Tensor& value_cache,
                              const at::Tensor& slot_mapping,
                              const std::optional<at::Tensor>& k_scale,
                              const std::optional<at::Tensor>& v_scale) {
  at::Tensor pos_holder, table_holder, slot_holder, k_scale_holder, v_scale_holder;
  check_dim(q, "q", 3);
  check_dim(k, "k", 3);
  check_dim(v, "v", 3);
  check_activation_dtypes(q, "q", k, "k");
  check_activation_dtypes(q, "q", v, "v");
  for (const auto& [t, name] : NamedTensors{{&k, "k"},
                                             {&v, "v"},
                                             {&positions, "positions"},
                                             {&cos_sin_cache, "cos_sin_cache"},
                                             {&key_cache, "key_cache"},
                                             {&value_cache, "value_cache"},
                                             {&slot_mapping, "slot_mapping"}}) {
    check_device(*t, name, q, "q");
  }
  const int64_t tokens = q.size(0), head_size = q.size(2);
  ATOM_CHECK_VALUE(k.size(0) == tokens && v.size(0) == tokens && k.size(2) == head_size &&
                        v.size(2) == head_size && v.size(1) == k.size(1),
                   "atom: q ", q.sizes(), ", k ", k.sizes(), " and v ", v.sizes(),
                   " must be [T, Hq, D], [T, Hkv, D], [T, Hkv, D]");
  const IndexView pos = index_view(positions, "positions", pos_holder);
  ATOM_CHECK_VALUE(pos.count == tokens, "atom: positions has ", pos.count, " entries for ",
                   tokens, " tokens");
  const IndexView slots = index_view(slot_mapping, "slot_mapping", slot_holder);
  ATOM_CHECK_VALUE(slots.count <= tokens, "atom: slot_mapping has ", slots.count,
                   " entries for ", tokens, " tokens");

  // One dtype for both norm weights (an absent one takes the other's).
  std::optional<at::Tensor> weights[2] = {q_norm_weight, k_norm_weight};
  DType weight_dtype = DType::kFloat32;
  for (int i = 0; i < 2; ++i) {
    if (!weights[i].has_value()) continue;
    const char* name = i == 0 ? "q_norm_weight" : "k_norm_weight";
    check_dim(*weights[i], name, 1);
    ATOM_CHECK_VALUE(weights[i]->size(0) == head_size, "atom: ", name, " has ",
                     weights[i]->size(0), " elements for head_size ", head_size);
    check_device(*weights[i], name, q, "q");
    float_dtype(*weights[i], name);
    weights[i] = weights[i]->contiguous();
  }
  if (weights[0] && weights[1] && weights[0]->scalar_type() != weights[1]->scalar_type()) {
    weights[1] = weights[1]->to(weights[0]->scalar_type());  // exact: both are float dtypes
  }
  for (const auto& w : weights) {
    if (w) weight_dtype = to_dtype(*w, "norm weight");
  }

  bool q_copied = !heads_contiguous_inner(q), k_copied = !heads_contiguous_inner(k);
  at::Tensor qs = q_copied ? q.contiguous() : q, ks = k_copied ? k.contiguous() : k;
  const at::Tensor vs = readable_heads(v, "v");
  const PagedCacheView kc = cache_view(key_cache, "key_cache", k_scale, k_scale_holder);
  const PagedCacheView vc = cache_view(value_cache, "value_cache", v_scale, v_scale_holder);
  const DType dtype = to_dtype(q, "q");
  check_caches(kc, vc, k.size(1), head_size, head_size, dtype);

  const QkNormRopeCacheParams p{heads_view(qs),
                                heads_view(ks),
                                heads_view(vs),
                                weights[0] ? weights[0]->const_data_ptr() : nullptr,
                                weights[1] ? weights[1]->const_data_ptr() : nullptr,
                                weight_dtype,
                                static_cast<float>(eps),
                                pos,
                                cos_sin_view(cos_sin_cache, head_size, table_holder),
                                is_neox,
                                kc,
                                vc,
                                slots,
                                tokens,
                                dtype};
  launch(q, p, cpu::fused_qk_norm_rope_cache, ATOM_GPU_FN(fused_qk_norm_rope_cache));
  if (q_copied) q.copy_(qs);
  if (k_copied) k.copy_(ks);
}

}  // namespace atom
