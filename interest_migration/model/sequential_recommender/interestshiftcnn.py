r"""
InterestShiftCNN
################################################

A shopper's next action either stays in the category they are browsing or *migrates* to
another one (phones -> phone cases, skin care -> make-up). InterestShiftCNN models that choice
explicitly instead of leaving it implicit in one big softmax:

* a causal, dilated, residual 1-D CNN reads the recent items, each embedded together with its
  category, behaviour type (pv/cart/fav/buy) and a log-bucketed time gap when the data has them;
  an item's representation, on the input and on the scoring side, can add embeddings of further
  item attributes (``item_feature_fields``: brand, leaf category, ...), which lets items with few
  interactions borrow from others of the same brand or kind (as feature-aware sequential models
  such as FDSA and S3-Rec do); with ``item_graph_weight`` it also adds the mean vector of the
  item's neighbours in the training data's transition graph (the items bought just before or
  after it, as in GCE-GNN's global graph), which helps items with few interactions the same way;
  with ``item_graph_leave_one_out`` a training step's last item and target are built from the
  graph without that step's own transition, which an unseen step would not have either;
* three heads read the user state at the last real position:

  - ``p_shift``: probability that the next category differs from the current one (sigmoid);
  - ``q(c)``: distribution of the next category *given a shift* (softmax over the other categories,
    scored against the category embeddings, with a recency-aware bonus for categories already in
    the sequence: shoppers often migrate back to an earlier interest);
  - ``s(i)``: item scores, normalised *within* each category;
  - a *repeat mode*, because shoppers return to what they saw (two in three next items of the
    Taobao head are already in the history): ``p_repeat``, and ``R(i)``, a softmax over the
    positions of the sequence summed per item, each occurrence scored by its recency, its
    behaviour type and its match with the user state.

* where ranking excludes the items a user has seen (``exclude_seen_items``, the ``novel``
  protocol), the item softmax leaves out the input sequence's items in training too
  (``mask_history_items``): the model is trained on the candidate set it is ranked on, instead of
  spending its scores on pushing down items that can never be recommended; a category with no
  item left outside the history gets no P(c) then. It does the same where no training target
  repeats an input item (RepeatNet's explore mode over new items): re-visits then get their
  probability from the repeat mode alone, which learns how rare they are;
* an item's preference score is the dot product of the user state and the item's vector, or
  their cosine over ``score_temperature`` (as in CORE), which overfits Amazon Beauty less;
* items are scored from the predicted migration, mixed with the repeat mode:

  .. math::

      P(i) = p_{repeat}\, R(i) + (1 - p_{repeat})\, P(c_i)\, P(i \mid c_i), \qquad
      P(c) = (1 - p_{shift})\,[c = c_{last}] + p_{shift}\, q(c),

  which is a proper distribution over items. With ``migration_gate`` a per-user gate
  :math:`\alpha \in (0, 1)` lets the items' own score mass in each category count too,
  :math:`P(c) \propto P_{mig}(c) \, (\sum_{i \in c} e^{s(i)})^{1 - \alpha}` with :math:`P_{mig}` the
  stay-or-shift distribution above: :math:`\alpha = 1` is the strict factorisation, :math:`\alpha = 0`
  one softmax over :math:`s(i) + \log P_{mig}(c_i)`. The loss is the item negative log-likelihood plus
  ``lambda_cat`` * category cross-entropy (on shifting steps) plus ``lambda_shift`` * binary
  cross-entropy of ``p_shift``. Without a category field the migration mode is a plain
  next-item softmax; ``repeat_mixture: False`` leaves the repeat mode out.
  ``predict_migration`` reports the migration under the whole mixture: ``p_shift`` and the next
  categories are the item probabilities summed by category;
* with ``transition_window`` every item's score also gets a user-specific weight times
  ``log(1 + P(i | j) / 0.01)`` for each of the last few items ``j``, ``P(i | j)`` being the share of
  the training transitions out of ``j`` that went to ``i`` (FPMC's first-order Markov term beside
  the learned vectors); in training each step's own transition is left out of the counts. With
  ``transition_span`` K > 1 a transition out of ``j`` is any item within K steps after it, which
  smooths the sparse next-item counts of short histories.

Reference:
    Fajie Yuan et al. "A Simple Convolutional Generative Network for Next Item Recommendation"
    in WSDM 2019 (NextItNet: causal dilated residual convolutions).
    Jiaxi Tang and Ke Wang. "Personalized Top-N Sequential Recommendation via Convolutional
    Sequence Embedding" in WSDM 2018 (Caser).
    Ziyang Wang et al. "Global Context Enhanced Graph Neural Networks for Session-based
    Recommendation" in SIGIR 2020 (GCE-GNN: a global item transition graph).
    Yupeng Hou et al. "CORE: Simple and Effective Session-based Recommendation within Consistent
    Representation Space" in SIGIR 2022 (cosine scores over a temperature).
    Pengjie Ren et al. "RepeatNet: A Repeat Aware Neural Recommendation Machine for
    Session-based Recommendation" in AAAI 2019 (repeat consumption).
    Steffen Rendle et al. "Factorizing Personalized Markov Chains for Next-Basket
    Recommendation" in WWW 2010 (FPMC: a first-order transition term beside the factorisation).
"""

from typing import NamedTuple, Optional

import torch
from torch import nn
from torch.nn import functional as F

from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import FeatureSource, FeatureType

_MASKED = -1e9  # finite "minus infinity": keeps log-softmax free of NaN when a row is all masked
# transition scores are log(1 + P(i | j) / _TRANSITION_FLOOR): a transition seen once in a hundred
# steps from j counts about as much as log 2, one seen every time about log 101
_TRANSITION_FLOOR = 0.01


class Migration(NamedTuple):
    """The migration terms of one batch (``B`` users, ``C`` categories)."""

    shift_logit: torch.Tensor  # [B] logit of p_shift from the shift head
    log_p_cat: torch.Tensor  # [B, C] log P(next category) of the migration mode
    q_logits: torch.Tensor  # [B, C] masked logits of q(c), the next category given a shift
    current: torch.Tensor  # [B] category of the last item
    category_lse: Optional[torch.Tensor] = None  # [B, C] log-sum-exp of item scores per category


def _spare_rows(n):
    """Rows to add after ``n`` packed positions of a training batch, up to the next size on a grid
    of four sizes per doubling: at most a quarter more, and below 256 positions a multiple of 64
    (at most 63 more).

    Why: with every batch of its own size, glibc's allocator could not reuse the freed blocks of
    the previous step, and the memory of a Beauty training run grew from 2.5 to 5.7 GB. Spare rows
    come after every real one, so no real row reads them (taps only look back).
    """
    step = max(1 << max(n.bit_length() - 3, 0), 64)
    return -(-n // step) * step - n


def tap_rows(position, shifts):
    """Rows read by causal taps over packed sequences: ``[*shifts.shape, N]``.

    For packed rows at ``position`` [N] in their own sequence, a tap looking ``shift`` steps back
    reads row ``p + 1 - shift`` of the zero-led run (``[1 + N, D]``, row 0 all zeros), or row 0
    when that step lies before the sequence's start.
    """
    rows = torch.arange(1, position.size(0) + 1, device=position.device)
    shifts = shifts.unsqueeze(-1)
    return torch.where(position >= shifts, rows - shifts, 0)


class CausalConvBlock(nn.Module):
    """Pre-norm residual block around one causal dilated convolution, over packed sequences.

    The block reads only the real positions of a batch, packed into one run ``[N, D]`` (a
    training batch of Amazon Beauty is 83 % right padding). Each of the ``kernel_size`` taps
    reads the position ``(kernel_size - 1 - k) * dilation`` steps earlier in the same sequence,
    or zeros before the sequence starts: the function of a left-padded ``nn.Conv1d`` over each
    sequence, so position ``t`` never sees positions after ``t``. The convolution is one matrix
    product over the taps, with the weights of ``self.conv``. One convolution and one dropout
    per block keep the CPU cost low.
    """

    def __init__(self, channels, kernel_size, dilation, dropout_prob):
        super().__init__()
        self.kernel_size = kernel_size
        self.norm = nn.LayerNorm(channels)
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        self.dropout = nn.Dropout(dropout_prob)
        # how far back each tap reads; not saved: it follows from the hyper-parameters
        self.register_buffer("shifts", torch.arange(kernel_size - 1, -1, -1) * dilation, persistent=False)

    def forward(self, x, rows):
        # x: [N, D] packed positions, rows: [K, N] (see tap_rows) -> [N, D]
        n, channels = x.shape
        y = F.pad(F.gelu(self.norm(x)), (0, 0, 1, 0))  # row 0: the zeros before a sequence starts
        taps = y.index_select(0, rows.flatten()).view(self.kernel_size, n, channels)
        taps = taps.transpose(0, 1).reshape(n, self.kernel_size * channels)
        weight = self.conv.weight.transpose(1, 2).reshape(self.conv.out_channels, -1)  # [D, K * D], tap-major
        return x + self.dropout(F.linear(taps, weight, self.conv.bias))


class InterestShiftCNN(SequentialRecommender):
    r"""Causal CNN that predicts whether, where and to which item a shopper's interest moves."""

    def __init__(self, config, dataset):
        super(InterestShiftCNN, self).__init__(config, dataset)

        # load parameters info
        self.embedding_size = config["embedding_size"]
        self.kernel_size = config["kernel_size"]
        self.dilations = list(config["dilations"])
        self.n_layers = config["n_layers"]
        self.dropout_prob = config["dropout_prob"]
        self.conv_padding = config["conv_padding"]
        self.time_buckets = config["time_buckets"]
        self.repeat_buckets = min(config["repeat_buckets"], self.max_seq_length)
        self.lambda_cat = config["lambda_cat"]
        self.lambda_shift = config["lambda_shift"]
        self.initializer_range = config["initializer_range"]
        self.migration_top_k = config["migration_top_k"]
        self.repeat_mixture = bool(config["repeat_mixture"])
        self.item_feature_fields = list(config["item_feature_fields"] or [])
        self.score_temperature = config["score_temperature"]
        self.item_graph_weight = config["item_graph_weight"]
        self.item_graph_leave_one_out = bool(config["item_graph_leave_one_out"])
        self.migration_gate = bool(config["migration_gate"])
        mask_history = config["mask_history_items"]
        if mask_history is None:  # follow the ranking, or the data where it never repeats
            mask_history = config["exclude_seen_items"] or not self._targets_repeat(dataset)
        self.mask_history = bool(mask_history)
        self.loss_type = config["loss_type"]
        self.transition_window = config["transition_window"] or 0
        self.transition_neighbours = config["transition_neighbours"]
        self.transition_span = config["transition_span"]
        self._check_hyper_parameters()

        # optional input features, each used only when the dataset has it
        self.CATEGORY_FIELD = config["CATEGORY_FIELD"]
        self.BEHAVIOR_FIELD = config["BEHAVIOR_FIELD"]
        self.TIME_FIELD = config["TIME_FIELD"]
        list_suffix = config["LIST_SUFFIX"]
        self.use_category = self.CATEGORY_FIELD is not None
        self.use_behavior = bool(config["use_behavior"]) and self._is_inter_field(dataset, self.BEHAVIOR_FIELD)
        self.use_time = bool(config["use_time_gap"]) and self._is_inter_field(dataset, self.TIME_FIELD)
        self.BEHAVIOR_SEQ = f"{self.BEHAVIOR_FIELD}{list_suffix}"
        self.TIME_SEQ = f"{self.TIME_FIELD}{list_suffix}"

        # define layers
        self.item_embedding = nn.Embedding(self.n_items, self.embedding_size, padding_idx=0)
        self.item_bias = nn.Parameter(torch.zeros(self.n_items))
        # item attributes added to the item representation: one embedding table and one
        # item -> token buffer per field (buffers, so checkpoints and tracing carry them)
        self.feature_embeddings = nn.ModuleList()
        for k, field in enumerate(self.item_feature_fields):
            item2token, n_tokens = self._item_tokens(dataset, field, "item_feature_fields")
            self.register_buffer(f"item2feature_{k}", item2token)
            self.feature_embeddings.append(nn.Embedding(n_tokens, self.embedding_size, padding_idx=0))
        if self.item_graph_weight:
            # not saved: it is rebuilt from the training data, as the model always is. Kept as
            # dense index and weight vectors: DistributedDataParallel cannot broadcast sparse buffers
            indices, weights, degree = self._transition_graph(dataset)
            self.register_buffer("item_graph_indices", indices, persistent=False)
            self.register_buffer("item_graph_weights", weights, persistent=False)
            self.register_buffer("item_graph_degree", degree, persistent=False)
        if self.transition_window:
            # not saved, rebuilt from the training data like the item graph
            neighbours, counts, degree = self._transition_table(dataset)
            self.register_buffer("transition_next", neighbours, persistent=False)
            self.register_buffer("transition_counts", counts, persistent=False)
            self.register_buffer("transition_degree", degree, persistent=False)
        if self.use_category:
            item2cat, self.n_categories = self._item_tokens(dataset, self.CATEGORY_FIELD, "CATEGORY_FIELD")
            self.register_buffer("item2cat", item2cat)
            has_items = torch.zeros(self.n_categories, dtype=torch.bool)
            has_items[item2cat[1:]] = True
            self.register_buffer("category_has_items", has_items)
            # items listed category by category, so that training reads only the target's category
            sizes = torch.bincount(item2cat, minlength=self.n_categories)
            order = torch.argsort(item2cat, stable=True)
            self.register_buffer("items_by_category", order)
            self.register_buffer("category_start", torch.cumsum(sizes, 0) - sizes)
            self.register_buffer("category_size", sizes)
            rank = torch.empty_like(order)
            rank[order] = torch.arange(len(order)) - self.category_start[item2cat[order]]
            self.register_buffer("rank_in_category", rank)  # where each item sits in its category's run
            self.max_category_size = int(sizes.max())
            self.category_embedding = nn.Embedding(self.n_categories, self.embedding_size, padding_idx=0)
            self.shift_head = nn.Linear(self.embedding_size, 1)
            if self.migration_gate:
                self.gate_head = nn.Linear(self.embedding_size, 1)
            self.category_bias = nn.Parameter(torch.zeros(self.n_categories))
            self.category_repeat_head = nn.Linear(self.embedding_size, self.repeat_buckets)
        if self.use_behavior:
            self.behavior_embedding = nn.Embedding(
                dataset.num(self.BEHAVIOR_FIELD), self.embedding_size, padding_idx=0
            )
        if self.use_time:
            self.time_embedding = nn.Embedding(self.time_buckets, self.embedding_size, padding_idx=0)
        self.input_norm = nn.LayerNorm(self.embedding_size)
        self.input_dropout = nn.Dropout(self.dropout_prob)
        self.blocks = nn.ModuleList(
            CausalConvBlock(self.embedding_size, self.kernel_size, dilation, self.dropout_prob)
            for _ in range(self.n_layers)
            for dilation in self.dilations
        )
        self.register_buffer("tap_shifts", torch.stack([block.shifts for block in self.blocks]), persistent=False)
        self.output_norm = nn.LayerNorm(self.embedding_size)
        if self.repeat_mixture:
            self.p_repeat_head = nn.Linear(self.embedding_size, 1)
            self.repeat_position_head = nn.Linear(self.embedding_size, self.repeat_buckets)
            if self.use_behavior:
                self.repeat_behavior = nn.Embedding(dataset.num(self.BEHAVIOR_FIELD), 1, padding_idx=0)

        if self.transition_window:
            self.transition_head = nn.Linear(self.embedding_size, self.transition_window)

        # parameters initialization
        self.apply(self._init_weights)
        if self.transition_window:  # start by trusting the transitions a little: log 2 per step seen once in 100
            nn.init.constant_(self.transition_head.bias, 1.0)
        self.logger.info(
            "InterestShiftCNN inputs: item%s%s%s%s",
            "".join(f" + {field}" for field in self.item_feature_fields),
            f" + category[{self.CATEGORY_FIELD}]" if self.use_category else "",
            f" + behaviour[{self.BEHAVIOR_FIELD}]" if self.use_behavior else "",
            f" + time gap[{self.TIME_FIELD}]" if self.use_time else "",
        )
        if not self.use_category:
            self.logger.warning(
                "InterestShiftCNN: CATEGORY_FIELD is not set, so there is no migration to model: "
                "falling back to a plain next-item CNN (no p_shift, no category heads)."
            )

    def _check_hyper_parameters(self):
        if self.conv_padding != "causal":
            raise ValueError(
                f"InterestShiftCNN: conv_padding={self.conv_padding!r} is not supported; only 'causal' "
                "is, because any other padding lets a position see later items (the targets)."
            )
        if not (isinstance(self.kernel_size, int) and self.kernel_size >= 1):
            raise ValueError(f"InterestShiftCNN: kernel_size must be an integer >= 1, got {self.kernel_size!r}")
        if not self.dilations or not all(isinstance(d, int) and d >= 1 for d in self.dilations):
            raise ValueError(f"InterestShiftCNN: dilations must be a list of integers >= 1, got {self.dilations!r}")
        if not (isinstance(self.n_layers, int) and self.n_layers >= 1):
            raise ValueError(f"InterestShiftCNN: n_layers must be an integer >= 1, got {self.n_layers!r}")
        if self.score_temperature is not None and not self.score_temperature > 0:
            raise ValueError(
                f"InterestShiftCNN: score_temperature must be a number > 0 (or ~ for the dot product), "
                f"got {self.score_temperature!r}"
            )
        if not (isinstance(self.transition_window, int) and self.transition_window >= 0):
            raise ValueError(
                f"InterestShiftCNN: transition_window must be an integer >= 0 (0 = off), got {self.transition_window!r}"
            )
        if self.transition_window and not (
            isinstance(self.transition_neighbours, int) and self.transition_neighbours >= 1
        ):
            raise ValueError(
                f"InterestShiftCNN: transition_neighbours must be an integer >= 1, got {self.transition_neighbours!r}"
            )
        if self.transition_window and not (isinstance(self.transition_span, int) and self.transition_span >= 1):
            raise ValueError(
                f"InterestShiftCNN: transition_span must be an integer >= 1, got {self.transition_span!r}"
            )
        if self.loss_type != "CE":
            raise ValueError(
                f"InterestShiftCNN: loss_type={self.loss_type!r} is not supported; it is trained with the "
                "full-softmax likelihood of its migration mixture (loss_type: CE, train_neg_sample_args: ~)."
            )

    @staticmethod
    def _is_inter_field(dataset, field):
        return field is not None and dataset.field2source.get(field) == FeatureSource.INTERACTION

    @staticmethod
    def _item_tokens(dataset, field, key):
        """Token id of ``field`` for every item id (0 = unknown); the first value of a ``token_seq``
        field. ``key`` is the config key that named the field, for the error message."""
        if dataset.field2source.get(field) != FeatureSource.ITEM or dataset.field2type[field] not in (
            FeatureType.TOKEN,
            FeatureType.TOKEN_SEQ,
        ):
            item_fields = [
                f for f, s in dataset.field2source.items() if s == FeatureSource.ITEM and f != dataset.iid_field
            ]
            raise ValueError(
                f"InterestShiftCNN: {key} names {field!r}, which is not a token or token_seq field of the item "
                f"features of dataset {dataset.dataset_name!r} (loaded item fields: {item_fields or 'none'}); "
                f"add it to load_col['item'] or set {key} to one of those fields."
            )
        item_feat = dataset.get_item_feature()
        categories = item_feat[field]
        if categories.dim() == 2:
            categories = categories[:, 0]
        item2cat = torch.zeros(dataset.item_num, dtype=torch.long)
        item2cat[item_feat[dataset.iid_field]] = categories.long()
        return item2cat, dataset.num(field)

    def _training_transitions(self, dataset, span: int = 1):
        """(earlier item, next item) of every training step whose two items differ, the earlier item
        being any of the ``span`` items before the step's target: RecBole gives a model its
        training split, one row per step, so no validation or test transition is here."""
        feat = dataset.inter_feat
        earlier = self._last_items(feat[self.ITEM_SEQ], feat[self.ITEM_SEQ_LEN], span).t()  # [span, N]
        target = feat[self.ITEM_ID].expand_as(earlier)
        keep = (earlier > 0) & (earlier != target)
        return earlier[keep], target[keep]

    def _targets_repeat(self, dataset) -> bool:
        """Whether any training step's target is among its input items. Where none is (a log of
        reviews or ratings, each item once per user), nothing in training could teach the item
        softmax about re-visits, so it leaves the history out as under ``novel``; the repeat mode
        still learns how rare re-visits are."""
        feat = dataset.inter_feat
        return bool((feat[self.ITEM_SEQ] == feat[self.ITEM_ID].unsqueeze(1)).any())

    @staticmethod
    def _last_items(item_seq, item_seq_len, n: int):
        """The last ``n`` items of each sequence, the most recent first [B, n]; 0 where it is shorter."""
        position = item_seq_len.unsqueeze(1) - 1 - torch.arange(n, device=item_seq.device)
        return item_seq.gather(1, position.clamp(min=0)).masked_fill(position < 0, 0)

    def _transition_graph(self, dataset):
        """Item graph of the training data's consecutive interactions, both directions, each row
        normalised to sum to one, as the (coalesced) indices [2, E] and weights [E] of a sparse
        [n_items, n_items] tensor: an item's neighbours are the items bought just before or after
        it. Also each item's number of transitions in it [n_items] (the rows' sums before normalising)."""
        previous, target = self._training_transitions(dataset)
        indices, values, degree = self._count_pairs(torch.cat([previous, target]), torch.cat([target, previous]))
        return indices, values / degree[indices[0]], degree

    def _count_pairs(self, src, dst):
        """How often each (src, dst) item pair occurs: the coalesced indices [2, E] (sorted by src,
        then dst) and counts [E] of a sparse [n_items, n_items] tensor, and each src item's total [n_items]."""
        size = (self.n_items, self.n_items)
        counts = torch.sparse_coo_tensor(torch.stack([src, dst]), torch.ones(src.size(0)), size).coalesce()
        indices, values = counts.indices(), counts.values()
        return indices, values, torch.zeros(self.n_items).index_add_(0, indices[0], values)

    def _transition_table(self, dataset):
        """Where shoppers went next from each item (within ``transition_span`` steps), in the training
        data: the ``transition_neighbours`` most frequent next items [n_items, M] (0 = none), their
        counts [n_items, M] and every item's number of outgoing transitions [n_items] (all of them,
        not only the M kept)."""
        (src, dst), values, degree = self._count_pairs(*self._training_transitions(dataset, self.transition_span))
        # rows in item order, each row's next items most frequent first (two stable sorts)
        order = torch.argsort(-values, stable=True)
        order = order[torch.argsort(src[order], stable=True)]
        src, dst, values = src[order], dst[order], values[order]
        row_size = torch.bincount(src, minlength=self.n_items)
        rank = torch.arange(src.size(0)) - (torch.cumsum(row_size, 0) - row_size)[src]
        keep = rank < self.transition_neighbours
        neighbours = torch.zeros(self.n_items, self.transition_neighbours, dtype=torch.long)
        table_counts = torch.zeros(self.n_items, self.transition_neighbours)
        neighbours[src[keep], rank[keep]] = dst[keep]
        table_counts[src[keep], rank[keep]] = values[keep]
        return neighbours, table_counts, degree

    def _transition_scores(self, seq_output, item_seq, item_seq_len, scores, target=None):
        """Add to ``scores`` [B, n_items] a user-specific weight per step back times
        log(1 + P(i | j) / floor) for the next items i of each of the last ``transition_window``
        items j: an explicit first-order Markov term beside the learned vectors (as FPMC adds
        one to matrix factorisation), which remembers item-to-item transitions that low-rank
        vectors smooth away.

        ``target``: in training, each step's own transitions (each of its last ``transition_span``
        items -> target) are left out of the counts, as they would be absent for an unseen step;
        without this the model learns to trust the transitions far more than they deserve on
        validation and test data.
        """
        items = self._last_items(item_seq, item_seq_len, self.transition_window)  # [B, W]
        neighbours = self.transition_next[items]  # [B, W, M]
        counts = self.transition_counts[items]
        degree = self.transition_degree[items]  # [B, W]
        if target is not None:
            # how many of the step's own pairs (item within the span -> target) each row j holds
            recent = self._last_items(item_seq, item_seq_len, self.transition_span)  # [B, K]
            counted = (items > 0) & (items != target.unsqueeze(1))  # [B, W]
            own = (items.unsqueeze(2) == recent.unsqueeze(1)).sum(2) * counted  # [B, W]
            counts = counts - own.unsqueeze(2) * (neighbours == target.view(-1, 1, 1))
            degree = degree - own
        p_next = counts / degree.clamp(min=1).unsqueeze(2)
        weight = self.transition_head(seq_output)  # [B, W]
        bonus = weight.unsqueeze(2) * torch.log1p(p_next / _TRANSITION_FLOOR)
        return scores.scatter_add(1, neighbours.flatten(1), bonus.flatten(1))

    @property
    def item_graph(self):
        """The transition graph as a sparse [n_items, n_items] tensor (see ``_transition_graph``)."""
        size = (self.n_items, self.n_items)
        return torch.sparse_coo_tensor(self.item_graph_indices, self.item_graph_weights, size, is_coalesced=True)

    def _init_weights(self, module):
        if isinstance(module, (nn.Embedding, nn.Linear, nn.Conv1d)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        if isinstance(module, (nn.Linear, nn.Conv1d)) and module.bias is not None:
            module.bias.data.zero_()
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
        if isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    def _time_gap_buckets(self, timestamps, item_seq_len):
        """log2-bucketed gap to the previous event; 0 is padding, 1 the first event."""
        gaps = (timestamps[:, 1:] - timestamps[:, :-1]).clamp(min=0)
        buckets = 2 + torch.floor(torch.log2(1.0 + gaps)).long()
        first = torch.ones(timestamps.size(0), 1, dtype=torch.long, device=timestamps.device)
        buckets = torch.cat([first, buckets], dim=1)
        buckets = buckets.clamp(max=self.time_buckets - 1)
        positions = torch.arange(timestamps.size(1), device=timestamps.device)
        return buckets.masked_fill(positions.unsqueeze(0) >= item_seq_len.unsqueeze(1), 0)

    def _item_representations(self):
        """Every item's vector [n_items, D]: its own embedding plus its attributes' embeddings, plus
        ``item_graph_weight`` times the mean of those of its neighbours in the transition graph.

        Without gradients (evaluation, export, serving) the table is built once per version of the
        weights and reused: building it costs more than scoring one user against it.
        """
        if not self.feature_embeddings and not self.item_graph_weight:
            return self.item_embedding.weight
        if torch.is_grad_enabled():
            return self._build_item_representations()
        return self._per_weights("_item_table", None, self._build_item_representations)

    def _per_weights(self, name, source, build):
        """``build()``, kept in ``self.<name>`` while the item weights stay the same version and
        ``source`` (what it is built from, or None) the same tensor."""
        weights = (self.item_embedding.weight, *(embedding.weight for embedding in self.feature_embeddings))
        # parameters' versions count in-place optimiser steps (inference-mode tensors have none)
        key = tuple((w.data_ptr(), w._version) for w in weights)
        cache = getattr(self, name, None)  # (source, key, value)
        if cache is None or cache[0] is not source or cache[1] != key:
            cache = (source, key, build())
            setattr(self, name, cache)
        return cache[2]

    def _build_item_representations(self):
        own, neighbours = self._item_parts()
        return own if neighbours is None else own + self.item_graph_weight * neighbours

    def _item_parts(self):
        """Every item's own vector (embedding plus attributes) [n_items, D], and the mean of its
        neighbours' own vectors in the transition graph [n_items, D] (None without the graph)."""
        own = self.item_embedding.weight
        for k, embedding in enumerate(self.feature_embeddings):
            own = own + embedding(getattr(self, f"item2feature_{k}"))
        return own, torch.sparse.mm(self.item_graph, own) if self.item_graph_weight else None

    def _without_own_transition(self, own, neighbours, previous, target):
        """Vectors [B, D] of each training step's last item and of its target, from the graph
        without that step's own transition (one fewer pair in each direction).

        Why: the graph is built from the training transitions, so in training the last item's
        vector holds a share of the target's and the target's a share of the last item's; the model
        learns to lean on that link, which an unseen step does not have (``item_graph_leave_one_out``).
        """
        in_graph = ((previous > 0) & (previous != target)).float().unsqueeze(1)  # as _training_transitions

        def vector(item, other):
            degree = self.item_graph_degree[item].unsqueeze(1)
            rest = degree - in_graph
            total = neighbours[item] * degree - in_graph * own[other]
            mean = torch.where(rest > 0, total / rest.clamp(min=1), torch.zeros_like(total))
            return own[item] + self.item_graph_weight * mean

        return vector(previous, target), vector(target, previous)

    def _pair_scores(self, seq_output, vectors, items):
        """The scores of ``_item_scores`` for one item per user, given its vector [B, D]: [B]."""
        if self.score_temperature:
            preference = (F.normalize(seq_output, dim=-1) * F.normalize(vectors, dim=-1)).sum(-1)
            return preference / self.score_temperature + self.item_bias[items]
        return (seq_output * vectors).sum(-1) + self.item_bias[items]

    def _embed_items(self, item_seq, item_table=None):
        """Item vectors of item ids [...] -> [..., D], read from ``item_table`` (default: built here);
        the padding item gets no gradient, as from an ``nn.Embedding`` with ``padding_idx``."""
        table = self._item_representations() if item_table is None else item_table
        return F.embedding(item_seq, table, padding_idx=0)

    def forward(self, item_seq, item_seq_len, behavior_seq=None, time_seq=None, item_table=None, last_vectors=None):
        """User state at the last real position of each sequence: [B, D]. ``last_vectors`` [B, D]
        replace the last items' vectors (see ``_without_own_transition``).

        The CNN runs over the real positions only, packed sequence after sequence into one run
        (see :class:`CausalConvBlock`); the padding after each sequence is never computed.
        """
        item_seq_len = item_seq_len.clamp(min=1)  # an empty sequence reads its own padding, no other row
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        packed = (positions.unsqueeze(0) < item_seq_len.unsqueeze(1)).flatten().nonzero().squeeze(1)  # [N]
        extra = _spare_rows(packed.size(0)) if self.training else 0

        def take(seq):  # the packed values of a [B, L] sequence, then ``extra`` rows of padding (id 0)
            return F.pad(seq.flatten()[packed], (0, extra))

        position = F.pad(packed % item_seq.size(1), (0, extra))  # in its sequence; spare rows read zeros
        items = take(item_seq)
        x = self._embed_items(items, item_table)
        last_rows = torch.cumsum(item_seq_len, 0) - 1
        if last_vectors is not None:
            x = x.index_copy(0, last_rows, last_vectors)
        if self.use_category:
            x = x + self.category_embedding(self.item2cat[items])
        if self.use_behavior and behavior_seq is not None:
            x = x + self.behavior_embedding(take(behavior_seq))
        if self.use_time and time_seq is not None:
            x = x + self.time_embedding(take(self._time_gap_buckets(time_seq, item_seq_len)))
        x = self.input_dropout(self.input_norm(x))
        rows = tap_rows(position, self.tap_shifts)  # [blocks, K, N], all blocks at once
        for block, block_rows in zip(self.blocks, rows):
            x = block(x, block_rows)
        return self.output_norm(x)[last_rows]  # each sequence's last row

    def _encode(self, interaction, item_table, last_vectors=None):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        behavior_seq = interaction[self.BEHAVIOR_SEQ] if self.use_behavior else None
        time_seq = interaction[self.TIME_SEQ] if self.use_time else None
        seq_output = self.forward(item_seq, item_seq_len, behavior_seq, time_seq, item_table, last_vectors)
        return item_seq, item_seq_len, seq_output

    def _repeat_bonus(self, head, seq_output, id_seq, item_seq_len, scores):
        """Add to ``scores`` [B, n] a user-specific bonus per recency bucket for every id in ``id_seq``.

        Ids seen several times collect one bonus per occurrence, so frequency counts too.
        """
        positions = torch.arange(id_seq.size(1), device=id_seq.device).unsqueeze(0)
        recency = item_seq_len.unsqueeze(1) - 1 - positions  # 0 = last event
        bonus = head(seq_output).gather(1, recency.clamp(0, self.repeat_buckets - 1))
        return scores.scatter_add(1, id_seq, bonus * (recency >= 0))

    def _item_scores(self, seq_output, item_table):
        """Unnormalised item scores [B, n_items]: preference + bias. With ``score_temperature`` the
        preference is the cosine of state and item vector over the temperature: vector norms then
        cannot grow to fit rare items, and popularity is left to the bias."""
        # the padding item's mask rides on the bias, so that the matmul adds both in one pass
        bias = self.item_bias.index_fill(0, torch.zeros(1, dtype=torch.long, device=seq_output.device), _MASKED)
        if self.score_temperature:
            seq_output, item_table = F.normalize(seq_output, dim=-1), self._normalised(item_table)
            return torch.addmm(bias, seq_output, item_table.t(), alpha=1.0 / self.score_temperature)
        return torch.addmm(bias, seq_output, item_table.t())

    def _normalised(self, item_table):
        """Unit-length item vectors; without gradients kept for as long as ``item_table`` is the same
        tensor of the same weights: normalising the table costs far more than scoring one user."""
        if torch.is_grad_enabled():
            return F.normalize(item_table, dim=-1)
        return self._per_weights("_unit_item_table", item_table, lambda: F.normalize(item_table, dim=-1))

    @staticmethod
    def _mask_history(scores, item_seq, target=None):
        """``scores`` with the sequence's own items masked: the item softmax (and P(i | c)) then
        runs over the candidates that ranking with seen items excluded leaves, in training as in
        evaluation. A ``target`` [B] keeps its score, should it have been seen before (data with
        repeats), so that the loss stays the likelihood of what the user did."""
        masked = scores.scatter(1, item_seq, _MASKED)
        if target is not None:
            target = target.unsqueeze(1)
            masked = masked.scatter(1, target, scores.gather(1, target))
        return masked

    def _categories_left(self, item_seq, target=None):
        """[B, C]: whether each category keeps an item outside the masked history (``target``, which
        ``_mask_history`` spares, counts as outside).

        Why: a category whose items are all masked has no candidate left, yet the migration mode
        would still give it P(c), and P(i | c) over all-masked scores hands that share back to the
        masked items (P(c) / n each): they would be ranked again under ``repeats``, and in training
        the share is lost to every target. On the Taobao head half of the 393 categories hold one
        item, and for a fifth of the test users every item of the current category is in the history.
        """
        items = item_seq.sort(dim=1).values
        first = torch.ones_like(items, dtype=torch.bool)
        first[:, 1:] = items[:, 1:] != items[:, :-1]  # count each distinct item once
        counted = first & (items != 0)
        if target is not None:
            counted &= items != target.unsqueeze(1)
        masked = torch.zeros(items.size(0), self.n_categories, device=items.device, dtype=torch.long)
        masked = masked.scatter_add(1, self.item2cat[items], counted.long())
        size = self.category_size - F.one_hot(self.item2cat[0], self.n_categories)  # not the padding item
        return masked < size

    def _migration(self, seq_output, item_seq, item_seq_len, scores, left=None):
        """The migration mode's terms (:class:`Migration`). With ``migration_gate`` its P(c) also
        weighs each category by the items' own score mass in it (see ``_gated_category``). ``left``
        [B, C] (see ``_categories_left``): P(c) only over the categories that still have candidates,
        staying included (P(stay) goes to shifting where the current category has none left)."""
        current = self.item2cat[self._last_items(item_seq, item_seq_len, 1).squeeze(1)]
        shift_logit = self.shift_head(seq_output).squeeze(-1)
        # shoppers often migrate *back*: categories already in the sequence get a recency bonus
        q_logits = seq_output @ self.category_embedding.weight.t() + self.category_bias
        q_logits = self._repeat_bonus(
            self.category_repeat_head, seq_output, self.item2cat[item_seq], item_seq_len, q_logits
        )
        q_logits = q_logits.masked_fill(~self.category_has_items if left is None else ~left, _MASKED)
        q_logits = q_logits.scatter(1, current.unsqueeze(1), _MASKED)  # q is *given a shift*
        log_p_cat = F.logsigmoid(shift_logit).unsqueeze(1) + F.log_softmax(q_logits, dim=1)
        log_p_cat = log_p_cat.scatter(1, current.unsqueeze(1), F.logsigmoid(-shift_logit).unsqueeze(1))
        if left is not None:
            log_p_cat = F.log_softmax(log_p_cat.masked_fill(~left, _MASKED), dim=1)
        migration = Migration(shift_logit, log_p_cat, q_logits, current)
        return self._gated_category(seq_output, scores, migration) if self.migration_gate else migration

    def _gated_category(self, seq_output, scores, migration):
        """P(c) proportional to P_mig(c) * (sum of exp(s(i)) over the items of c) ** (1 - alpha).

        With alpha = 1 the next category is the migration mode's alone (a strict P(c) P(i | c));
        with alpha = 0 items are scored by one softmax over s(i) + log P_mig(c_i), so the
        migration reweights the categories of a plain next-item softmax instead of replacing
        their mass. alpha is a per-user gate in (0, 1): how far to trust the category
        structure for this shopper, who may stay loyal to a category (Taobao) or mostly leave it
        (55 % of consecutive Amazon Beauty reviews change category).
        """
        category_lse = self._category_logsumexp(scores)
        alpha = torch.sigmoid(self.gate_head(seq_output))  # [B, 1]
        logits = (migration.log_p_cat + (1 - alpha) * category_lse).masked_fill(~self.category_has_items, _MASKED)
        return migration._replace(log_p_cat=F.log_softmax(logits, dim=1), category_lse=category_lse)

    def _category_logsumexp(self, scores):
        """log of the sum of exp(scores) over each category's items [B, C], vectorised with
        scatter; an empty category gets the log of the smallest float (about -87)."""
        index = self.item2cat.unsqueeze(0).expand_as(scores)
        cat_max = torch.full(
            (scores.size(0), self.n_categories), float("-inf"), device=scores.device, dtype=scores.dtype
        ).scatter_reduce(1, index, scores, reduce="amax")
        # empty categories keep -inf; no item reads them. The max only stabilises exp().
        cat_max = torch.where(torch.isfinite(cat_max), cat_max, torch.zeros_like(cat_max)).detach()
        cat_sum = torch.zeros_like(cat_max).scatter_add(1, index, (scores - cat_max.gather(1, index)).exp())
        return cat_sum.clamp(min=torch.finfo(scores.dtype).tiny).log() + cat_max

    def _repeat_mode(self, seq_output, item_seq, item_seq_len, behavior_seq, item_table):
        """(log p_repeat [B], log(1 - p_repeat) [B], log softmax over positions [B, L]).

        P(i | repeat) is a softmax over the positions of the sequence, summed per item: each
        occurrence scores by its recency, its behaviour type and how well the item matches the
        user state, so frequent, recent, carted items come first (RepeatNet's repeat mode). It is
        kept per position ([B, L], not [B, n_items]): only the sequence's own items have mass.
        """
        positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)
        recency = item_seq_len.unsqueeze(1) - 1 - positions  # 0 = last event
        logits = self.repeat_position_head(seq_output).gather(1, recency.clamp(0, self.repeat_buckets - 1))
        logits = logits + (self._embed_items(item_seq, item_table) * seq_output.unsqueeze(1)).sum(-1)
        if self.use_behavior and behavior_seq is not None:
            logits = logits + self.repeat_behavior(behavior_seq).squeeze(-1)
        log_position = F.log_softmax(logits.masked_fill(recency < 0, _MASKED), dim=1)
        repeat_logit = self.p_repeat_head(seq_output).squeeze(-1)
        return F.logsigmoid(repeat_logit), F.logsigmoid(-repeat_logit), log_position

    def _outputs(self, interaction, target=None):
        """One encoder pass and the terms of both modes: (item_seq, scores, migration, repeat).
        The item table is built once for the input, the scores and the repeat mode. ``target``:
        the training targets, which ``mask_history_items`` leaves unmasked and
        ``item_graph_leave_one_out`` scores without their own transition."""
        last_vectors = target_vectors = None
        if target is not None and self.item_graph_weight and self.item_graph_leave_one_out:
            own, neighbours = self._item_parts()
            item_table = own + self.item_graph_weight * neighbours
            item_seq_len = interaction[self.ITEM_SEQ_LEN]
            previous = self._last_items(interaction[self.ITEM_SEQ], item_seq_len, 1).squeeze(1)
            last_vectors, target_vectors = self._without_own_transition(own, neighbours, previous, target)
        else:
            item_table = self._item_representations()
        item_seq, item_seq_len, seq_output = self._encode(interaction, item_table, last_vectors)
        scores = self._item_scores(seq_output, item_table)
        if target_vectors is not None:
            target_scores = self._pair_scores(seq_output, target_vectors, target)
            scores = scores.scatter(1, target.unsqueeze(1), target_scores.unsqueeze(1))
        if self.transition_window:
            scores = self._transition_scores(seq_output, item_seq, item_seq_len, scores, target)
        left = None
        if self.mask_history:
            scores = self._mask_history(scores, item_seq, target)
            left = self._categories_left(item_seq, target) if self.use_category else None
        migration = self._migration(seq_output, item_seq, item_seq_len, scores, left) if self.use_category else None
        repeat = None
        if self.repeat_mixture:
            behavior_seq = interaction[self.BEHAVIOR_SEQ] if self.use_behavior else None
            repeat = self._repeat_mode(seq_output, item_seq, item_seq_len, behavior_seq, item_table)
        return item_seq, scores, migration, repeat

    def _log_probs(self, interaction):
        """log P(item) for every item [B, n_items], plus the migration under the whole model."""
        item_seq, scores, migration, repeat = self._outputs(interaction)
        if migration is None:
            log_probs = F.log_softmax(scores, dim=1)
        else:  # log P(c_i) + log P(i | c_i)
            category_lse = migration.category_lse
            if category_lse is None:
                category_lse = self._category_logsumexp(scores)
            index = self.item2cat.unsqueeze(0).expand_as(scores)
            log_probs = (migration.log_p_cat - category_lse).gather(1, index) + scores
        if repeat is None:
            return log_probs, migration
        log_repeat, log_explore, log_position = repeat
        # the mixture differs from the migration mode only on the sequence's own items: mix there
        same_item = item_seq.unsqueeze(2) == item_seq.unsqueeze(1)  # [B, L, L]
        log_repeat_at = log_position.unsqueeze(1).masked_fill(~same_item, _MASKED).logsumexp(2)  # [B, L]
        mixed_at = torch.logaddexp(
            log_repeat.unsqueeze(1) + log_repeat_at, log_explore.unsqueeze(1) + log_probs.gather(1, item_seq)
        )
        log_probs = (log_explore.unsqueeze(1) + log_probs).scatter(1, item_seq, mixed_at)
        log_probs = log_probs.index_fill(1, torch.zeros(1, dtype=torch.long, device=log_probs.device), _MASKED)
        if migration is not None:  # the next category under both modes, for predict_migration
            log_p_cat = migration.log_p_cat
            repeat_cat = torch.zeros_like(log_p_cat).scatter_add(1, self.item2cat[item_seq], log_position.exp())
            log_repeat_cat = torch.where(repeat_cat > 0, repeat_cat.clamp(min=1e-30).log(), _MASKED)
            log_p_cat = torch.logaddexp(log_repeat.unsqueeze(1) + log_repeat_cat, log_explore.unsqueeze(1) + log_p_cat)
            migration = migration._replace(log_p_cat=log_p_cat)
        return log_probs, migration

    def _log_prob_in_category(self, scores, items, category):
        """log P(items[b] | category[b]) [B], category[b] being the item's own, reading the
        [B, largest category] scores of that category instead of all items: the exponentials
        dominate a training step on large catalogues."""
        offsets = torch.arange(self.max_category_size, device=scores.device).unsqueeze(0)
        index = (self.category_start[category].unsqueeze(1) + offsets).clamp(max=self.n_items - 1)
        in_category = scores.gather(1, self.items_by_category[index])
        in_category = in_category.masked_fill(offsets >= self.category_size[category].unsqueeze(1), _MASKED)
        target = in_category.gather(1, self.rank_in_category[items].unsqueeze(1)).squeeze(1)
        return target - in_category.logsumexp(1)

    def calculate_loss(self, interaction):
        """Negative log-likelihood of the target under the mixture, computed for the target only
        (no [B, n_items] mixture is built), plus the auxiliary migration losses."""
        pos_items = interaction[self.POS_ITEM_ID]
        item_seq, scores, migration, repeat = self._outputs(interaction, target=pos_items)
        if migration is None:
            log_p = -F.cross_entropy(scores, pos_items, reduction="none")
        else:  # log P(c) + log P(i | c) of the target
            target_cat = self.item2cat[pos_items]
            log_p = migration.log_p_cat.gather(1, target_cat.unsqueeze(1)).squeeze(1)
            if migration.category_lse is None:  # only the target's category is needed
                log_p = log_p + self._log_prob_in_category(scores, pos_items, target_cat)
            else:
                target_score = scores.gather(1, pos_items.unsqueeze(1)).squeeze(1)
                log_p = log_p + target_score - migration.category_lse.gather(1, target_cat.unsqueeze(1)).squeeze(1)
        if repeat is not None:
            log_repeat, log_explore, log_position = repeat
            log_repeat_target = log_position.masked_fill(item_seq != pos_items.unsqueeze(1), _MASKED).logsumexp(1)
            log_p = torch.logaddexp(log_repeat + log_repeat_target, log_explore + log_p)
        loss = -log_p.mean()
        if migration is None:
            return loss
        shifted = (target_cat != migration.current).float()
        shift_loss = F.binary_cross_entropy_with_logits(migration.shift_logit, shifted)
        cat_loss = (F.cross_entropy(migration.q_logits, target_cat, reduction="none") * shifted).sum()
        cat_loss = cat_loss / shifted.sum().clamp(min=1.0)
        return loss + self.lambda_cat * cat_loss + self.lambda_shift * shift_loss

    def predict(self, interaction):
        test_item = interaction[self.ITEM_ID]
        return self.full_sort_predict(interaction).gather(1, test_item.unsqueeze(1)).squeeze(1)

    def full_sort_predict(self, interaction):
        log_probs, _ = self._log_probs(interaction)
        return log_probs

    def _summarise_migration(self, migration, k):
        log_p_cat, current = migration.log_p_cat, migration.current
        k = min(k or self.migration_top_k, int(self.category_has_items.sum()))
        top = log_p_cat.topk(k, dim=1)
        stay = log_p_cat.gather(1, current.unsqueeze(1)).squeeze(1)
        return {
            "p_shift": -torch.expm1(stay),  # 1 - P(current category); sigmoid(shift_logit) without repeats
            "current_category": current,
            "top_categories": top.indices,
            "top_category_probs": top.values.exp(),
        }

    @torch.no_grad()
    def predict_migration(self, interaction, k=None):
        """The predicted migration of each user: for export and analysis.

        Returns a dict of tensors: ``p_shift`` [B], the probability that the next item's category
        differs from ``current_category`` [B], and the ``k`` most likely next categories,
        ``top_categories`` [B, k] (internal category ids of ``CATEGORY_FIELD``) with their
        ``top_category_probs`` [B, k]; both under the whole model (repeat and migration modes).
        """
        if not self.use_category:
            raise ValueError("InterestShiftCNN was trained without CATEGORY_FIELD: it predicts no migration.")
        return self._summarise_migration(self._log_probs(interaction)[1], k)

    @torch.no_grad()
    def full_sort_predict_with_migration(self, interaction, k=None):
        """``full_sort_predict`` and ``predict_migration`` from one encoder pass (serving, export).

        The migration is None when the model has no categories.
        """
        log_probs, migration = self._log_probs(interaction)
        return log_probs, None if migration is None else self._summarise_migration(migration, k)
