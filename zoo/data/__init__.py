"""memzoo data: tokenizers, document sources, packing, checkpointable iterators, synthetic tasks.

    from zoo.data import make_data
    data = make_data(cfg)              # cfg: zoo.config.Config
    batch = next(data.train)           # {"inputs", "targets", "segment_ids", "loss_mask"}
    state = data.train.get_state()     # JSON; data.train.set_state(state) resumes exactly
    data.tokenizer.save(workdir)       # zoo.data.load_tokenizer(workdir) reads it back
"""

from zoo.data.builtin import builtin_corpus
from zoo.data.errors import DataError
from zoo.data.iterator import BatchIterator, GeneratorBatchIterator
from zoo.data.packing import pack_documents
from zoo.data.pipeline import DataBundle, make_data
from zoo.data.sources import load_documents, split_documents
from zoo.data.synthetic import MQAR_VERSION, mqar_batch
from zoo.data.tokenizers import (
    ByteTokenizer,
    SentencePieceTokenizer,
    build_tokenizer,
    load_tokenizer,
)

__all__ = [
    "MQAR_VERSION",
    "BatchIterator",
    "ByteTokenizer",
    "DataBundle",
    "DataError",
    "GeneratorBatchIterator",
    "SentencePieceTokenizer",
    "build_tokenizer",
    "builtin_corpus",
    "load_documents",
    "load_tokenizer",
    "make_data",
    "mqar_batch",
    "pack_documents",
    "split_documents",
]
