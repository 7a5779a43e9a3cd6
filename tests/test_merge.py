"""The category merge (export/merge.py) on small synthetic confusion matrices."""
import numpy as np
import pytest

from export import merge


def block_confusion(blocks: list[list[int]], n: int, size: int = 100, within: int = 30) -> np.ndarray:
    """Each class keeps ``size - within * (len(block) - 1)`` crops and sends ``within`` to each block mate."""
    conf = np.zeros((n, n), np.int64)
    for block in blocks:
        for i in block:
            for j in block:
                conf[i, j] = within if i != j else size - within * (len(block) - 1)
    return conf


def partition(mapping: dict[str, str]) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for fine, cat in mapping.items():
        groups.setdefault(cat, set()).add(fine)
    return {frozenset(g) for g in groups.values()}


def test_a_block_diagonal_matrix_merges_into_its_blocks():
    classes = [f"c{i}" for i in range(7)]
    blocks = [[0, 3], [1, 4], [2, 5], [6]]
    res = merge.merge_by_confusion(classes, block_confusion(blocks, 7))
    assert partition(res.mapping) == {frozenset(classes[i] for i in b) for b in blocks}
    assert res.accuracy == 1.0 and not res.cap_limited and len(res.steps) == 3
    assert all(c["accuracy"] == 1.0 for c in res.categories.values())


def test_one_stray_mistake_is_not_a_reason_to_merge():
    classes = ["animals-birds", "animals-mammals", "tools", "watch_round", "watch_square"]
    conf = np.diag([50, 50, 50, 50, 50])
    conf[0, 1], conf[1, 0] = 20, 15  # birds and mammals are confused
    conf[3, 4], conf[4, 3] = 25, 25  # so are the two watch classes
    conf[2, 3] = 1
    res = merge.merge_by_confusion(classes, conf, max_share=1.0)  # five classes: no cap here
    assert res.mapping == {"animals-birds": "animals", "animals-mammals": "animals", "tools": "tools",
                           "watch_round": "watch", "watch_square": "watch"}
    assert res.accuracy >= merge.TARGET_ACCURACY and "no pair confused" in res.stop


def test_classes_the_model_separates_stay_apart():
    res = merge.merge_by_confusion(["a", "b", "c"], np.diag([10, 10, 10]))
    assert res.mapping == {"a": "a", "b": "b", "c": "c"} and res.accuracy == 1.0 and res.steps == []


def test_a_dominant_class_cannot_swallow_everything():
    # class 0 holds a fifth of the catalog and every other class is mostly predicted as class 0: a merge
    # by mutual confusion counts absorbs them one after the other into one category
    n = 9
    conf = np.zeros((n, n), np.int64)
    conf[0, 0] = 200
    for i in range(1, n):
        conf[i, i], conf[i, 0] = 40, 60
    classes = [f"k{i}" for i in range(n)]
    res = merge.merge_by_confusion(classes, conf)
    assert max(c["share"] for c in res.categories.values()) <= merge.MAX_CATEGORY_SHARE
    assert len(res.categories) >= 3
    assert res.cap_limited and res.accuracy < merge.TARGET_ACCURACY and "size cap" in res.stop
    # the cap counts the sizes given (products), not the crops
    sizes = np.array([1] + [10] * (n - 1))
    by_products = merge.merge_by_confusion(classes, conf, sizes=sizes)
    assert max(c["share"] for c in by_products.categories.values()) <= merge.MAX_CATEGORY_SHARE
    assert by_products.mapping != res.mapping


def test_names_are_readable_and_unique():
    size = {"plants-flowers": 5, "plants-mushrooms": 3, "plants": 2, "animals-birds": 20, "animals-mammals": 30,
            "vehicles-ship": 9, "vehicles-auto": 8, "shoe": 4, "book": 1, "watch_round": 7, "watch_square": 6}
    groups = [["plants-flowers", "plants-mushrooms"], ["watch_round", "watch_square"],
              ["animals-birds", "animals-mammals", "vehicles-ship", "vehicles-auto", "shoe", "book"], ["plants"]]
    names = merge.category_names(groups, size)
    # "plants" is the fine class of another category: the merged plants are named by their members
    assert names == ["plants-flowers, plants-mushrooms", "watch", "animals, vehicles (+2)", "plants"]
    assert merge.category_names([["plants-flowers", "plants-mushrooms"], ["plants"]], size)[0] != "plants"
    assert merge.category_names([["plants-flowers", "plants-mushrooms"], ["book"]], size) == ["plants", "book"]
    # two categories that would get the same name get different ones
    twins = merge.category_names([["animals-birds", "shoe"], ["animals-birds-x", "shoe-y"]],
                                 {"animals-birds": 1, "shoe": 1, "animals-birds-x": 1, "shoe-y": 1})
    assert len(set(twins)) == 2


def test_the_merge_is_deterministic_and_logged():
    rng = np.random.default_rng(0)
    classes = [f"group{i // 3}-class{i}" for i in range(12)]
    conf = rng.integers(0, 8, (12, 12)) + np.diag(rng.integers(20, 60, 12))
    first, again = merge.merge_by_confusion(classes, conf), merge.merge_by_confusion(classes, conf)
    assert first == again
    order = rng.permutation(12)
    shuffled = merge.merge_by_confusion([classes[i] for i in order], conf[np.ix_(order, order)])
    assert partition(shuffled.mapping) == partition(first.mapping)
    log = first.log()
    assert {"merged_accuracy", "categories", "stop", "cap_limited", "steps"} <= set(log)
    assert sum(c["crops"] for c in log["categories"].values()) == conf.sum()
    assert set(first.mapping.values()) == set(log["categories"])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="shape"):
        merge.merge_by_confusion(["a", "b"], np.eye(3))
    with pytest.raises(ValueError, match="unique"):
        merge.merge_by_confusion(["a", "a"], np.eye(2))
    with pytest.raises(ValueError, match="sizes"):
        merge.merge_by_confusion(["a", "b"], np.eye(2), sizes=[1, -1])


def stuck_confusion() -> tuple[list[str], np.ndarray, np.ndarray]:
    """Six classes of equal size, cap 40 % (at most two per category). Agglomeration joins the most confused
    pair first, (0, 1), which leaves 2 and 3, each confused with 0 and 1, stranded: the best pairs are
    (0, 2) and (1, 3)."""
    classes = [f"k{i}" for i in range(6)]
    conf = np.diag([100] * 6)
    conf[0, 1] = conf[1, 0] = 12
    conf[0, 2] = conf[2, 0] = 10
    conf[1, 3] = conf[3, 1] = 10
    conf[4, 5] = conf[5, 4] = 1
    return classes, conf, np.ones(6)


def test_the_size_cap_does_not_strand_classes_the_agglomeration_split():
    classes, conf, sizes = stuck_confusion()
    res = merge.merge_by_confusion(classes, conf, sizes=sizes)
    assert partition(res.mapping) == {frozenset({"k0", "k2"}), frozenset({"k1", "k3"}), frozenset({"k4", "k5"})}
    within = sum(conf[i, j] for i in range(6) for j in range(6) if res.mapping[classes[i]] == res.mapping[classes[j]])
    assert res.accuracy == round(within / conf.sum(), 4)
    assert max(c["share"] for c in res.categories.values()) <= merge.MAX_CATEGORY_SHARE
    reb = res.log()["rebalanced"]
    # the agglomeration alone: (0, 1) and (4, 5) merged, 2 and 3 alone
    assert reb["accuracy_before"] == round((600 + 24 + 2) / conf.sum(), 4) < reb["accuracy_after"] == res.accuracy
    assert reb["categories_before"] == 4 and reb["categories_after"] == 3 and reb["starts"] > 1


def test_the_rebalanced_merge_never_loses_to_the_agglomeration_and_keeps_the_cap():
    rng = np.random.default_rng(3)
    for trial in range(5):
        n = 14
        classes = [f"t{trial}-c{i}" for i in range(n)]
        conf = rng.integers(0, 12, (n, n)) + np.diag(rng.integers(20, 80, n))
        sizes = rng.integers(1, 6, n)
        res = merge.merge_by_confusion(classes, conf, sizes=sizes)
        assert max(c["share"] for c in res.categories.values()) <= merge.MAX_CATEGORY_SHARE + 1e-9
        assert res.rebalanced and res.rebalanced["accuracy_after"] > res.rebalanced["accuracy_before"]
        order = rng.permutation(n)  # the classes' order does not matter
        shuffled = merge.merge_by_confusion([classes[i] for i in order], conf[np.ix_(order, order)], sizes=sizes[order])
        assert partition(shuffled.mapping) == partition(res.mapping) and shuffled.accuracy == res.accuracy


def test_a_merge_that_reaches_its_target_is_not_rebalanced():
    classes = [f"c{i}" for i in range(7)]
    res = merge.merge_by_confusion(classes, block_confusion([[0, 3], [1, 4], [2, 5], [6]], 7))
    assert res.rebalanced is None and res.log()["rebalanced"] is None


def test_a_swap_frees_two_full_categories_that_no_single_move_can():
    # two categories of two classes each at a cap of two: every move breaks the cap, only a swap can pair 0 with 2
    conf = np.diag([100.0] * 4)
    conf[0, 1] = conf[1, 0] = 6
    conf[2, 3] = conf[3, 2] = 0.5
    conf[0, 2] = conf[2, 0] = conf[1, 3] = conf[3, 1] = 5
    w = conf + conf.T
    np.fill_diagonal(w, 0)
    label = merge._local_search(w, np.ones(4), 2.0, np.array([0, 0, 1, 1]))
    assert label[0] == label[2] != label[1] == label[3]


def test_a_class_bigger_than_the_cap_stands_alone_and_the_rest_is_still_rebalanced():
    classes, conf, sizes = stuck_confusion()
    classes.append("giant")
    conf = np.pad(conf, ((0, 1), (0, 1)))
    conf[6, 6] = 100
    res = merge.merge_by_confusion(classes, conf, sizes=np.append(sizes, 3.0), max_share=0.25)  # cap 2.25 of 9
    assert partition(res.mapping) == {frozenset({"k0", "k2"}), frozenset({"k1", "k3"}), frozenset({"k4", "k5"}),
                                      frozenset({"giant"})}
    assert res.rebalanced["starts"] > 1


def test_tied_partitions_do_not_depend_on_the_classes_order():
    # a small integer matrix with many tied moves; the agglomeration gives the same groups in both orders
    conf = np.array([[9, 2, 1, 1, 2, 0, 0, 0], [2, 7, 0, 0, 1, 2, 2, 0], [1, 0, 6, 0, 2, 2, 0, 0], [1, 0, 0, 8, 2, 0, 1, 1],
                     [2, 1, 2, 2, 9, 0, 1, 0], [0, 2, 2, 0, 0, 9, 1, 0], [0, 2, 0, 1, 1, 1, 6, 2], [0, 0, 0, 1, 0, 0, 2, 7]])
    classes = [f"c{i}" for i in range(8)]
    order = [3, 4, 6, 0, 1, 7, 2, 5]
    first = merge.merge_by_confusion(classes, conf, sizes=np.ones(8))
    shuffled = merge.merge_by_confusion([classes[i] for i in order], conf[np.ix_(order, order)], sizes=np.ones(8))
    assert first.rebalanced and partition(shuffled.mapping) == partition(first.mapping)
