import io, sentencepiece as spm
corpus = ["Task: pick up the cup, State: 0 12 128 255 -1;", "Action: ", "go around the left of the obstacle",
          "Pick up the fork and put it in the bowl", "0 1 2 3 4 5 6 7 8 9", "open the drawer, close the_door"]
m = io.BytesIO()
spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus*5), model_writer=m, vocab_size=110, model_type="bpe",
    minloglevel=2, pad_id=0, eos_id=1, bos_id=2, unk_id=3, normalization_rule_name="identity",
    add_dummy_prefix=False, remove_extra_whitespaces=False, user_defined_symbols=["\n"], split_digits=True)
open("/tmp/h14p/sp.model","wb").write(m.getvalue())
