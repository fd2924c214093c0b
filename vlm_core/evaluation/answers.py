"""Reading a model's short answer the way the field scores VQA-style questions.

Three rules, each a function of (generated text, expected answer):

- **VQAv2 answer normalisation** (``vqa_normalise``), applied to both sides before any comparison: a faithful
  re-implementation of the ``EvalAIAnswerProcessor`` that lmms-eval uses for VQAv2 / OK-VQA / VizWiz
  (``lmms_eval/tasks/_task_utils/vqa_eval_metric.py``), itself copied from facebookresearch/mmf
  (``pythia/tasks/processors.py``) after the official VQA evaluation (``vqaEval.py``). Steps, in order:
  lowercase; drop ``,`` and ``?``; split off ``'s``; newlines and tabs → spaces; the punctuation rule (per mark of
  ``PUNCTUATIONS``: if any copy of it touches a space anywhere in the text, every copy is deleted, else every copy
  becomes a space — so ``"black-and-white"`` → ``"black and white"`` but ``"yes - black-and-white"`` →
  ``"yes blackandwhite"``; the reference's "comma between digits" branch cannot fire, commas being gone by then);
  the period rule (a ``.`` not followed by a digit is deleted: ``"2."`` → ``"2"``,
  ``"1.5"`` stays); number words zero–ten → digits (``"two"`` → ``"2"``, ``"none"`` → ``"0"``); articles ``a``,
  ``an``, ``the`` removed; the contractions table (``"dont"`` → ``"don't"``). Quirks of the reference are kept
  on purpose so scores stay comparable (see the comments at ``PERIOD_STRIP`` and ``CONTRACTIONS``).
- **yes/no by the first word** (``yes_no``), for questions whose expected answer is yes or no — POPE's kind of
  question, LLaVA-1.5's "single word or phrase" convention: the first word of the normalised prediction (with any
  punctuation the normaliser leaves around it stripped) must be ``yes`` or ``no``; anything else is *unanswered*
  and counts as wrong. ``"No, the image does not show a circle."`` → no; ``"I think yes"`` → unanswered. This is
  stricter than LLaVA's ``llava/eval/eval_pope.py`` (which reads "no" if the first sentence holds the word
  ``no``/``not`` and "yes" otherwise, so any rambling without a negation counts as "yes") and than lmms-eval's
  POPE task (whole prediction == answer): a model gets a yes/no question right only by answering it.
- **open answers by whole-word match** (``whole_word_match``): the normalised expected answer occurs in the
  normalised prediction as a whole word, or a run of whole words (``"The color of the circle is red."`` → red
  ✓, ``"reddish"`` ✗ for red, ``"two circles"`` ✓ for 2). Containment does not read negation or hedging
  (``"not red"``, ``"red or blue"`` both contain red): the strict rule below is reported beside it for that.

``score`` applies the field's rule by question kind and also reports **strict exact match**
(``exact_match``: normalised prediction == normalised answer), the old, stricter reading.
"""

from __future__ import annotations

import re
import string

SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."
"""LLaVA-1.5's short-answer prompt (its VQAv2 / GQA / POPE evaluation; lmms-eval's ``post_prompt``), appended to
the question after a newline."""

YES_NO = ("yes", "no")

# The contractions table of the VQA evaluation, as ``written=canonical`` pairs. Keys are looked up after the text
# is lowercased, so the reference's capitalised keys (Id've, I'dve, Im, Ive) never fire — kept as in the reference;
# so is its reversed ``somebody'd=somebodyd`` entry.
CONTRACTIONS: dict[str, str] = dict(pair.split("=") for pair in """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've couldnt've=couldn't've
didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've hadn'tve=hadn't've hasnt=hasn't
havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd howll=how'll hows=how's Id've=I'd've
I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am
mightnt=mightn't mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at
shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've shouldnt=shouldn't
shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd somebodyd've=somebody'd've
somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's someoned=someone'd someoned've=someone'd've
someone'dve=someone'd've someonell=someone'll someones=someone's somethingd=something'd
somethingd've=something'd've something'dve=something'd've somethingll=something'll thats=that's thered=there'd
thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd theyd've=they'd've
they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've
we'dve=we'd've weve=we've werent=weren't whatll=what'll whatre=what're whats=what's whatve=what've whens=when's
whered=where'd wheres=where's whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll
whos=who's whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll yall'd've=y'all'd've
y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've you'dve=you'd've youll=you'll
youre=you're youve=you've
""".split())
NUMBER_WORDS: dict[str, str] = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())} | {"none": "0"}
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATIONS = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!")
# The reference writes ``(?!<=\d)`` where a look-behind ``(?<!\d)`` was meant; as written it is a look-ahead that
# never fails, so the rule is "a period not followed by a digit". Kept as written, so "a.m." → "am", "2." → "2".
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(?<=\d)(,)+(?=\d)")
# The reference passes ``re.UNICODE`` (32) where ``re.sub`` takes its count: at most 32 periods are stripped.
_PERIOD_COUNT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    """The VQA punctuation rule, mark by mark: when some copy of the mark touches a space (or the text has a comma
    between digits, which never happens after ``vqa_normalise`` dropped commas: kept as in the reference) every
    copy of it is deleted, else every copy becomes a space ("black-and-white" → "black and white", but
    "yes - black-and-white" → "yes  blackandwhite"); then the period rule."""
    out = text
    digit_comma = COMMA_STRIP.search(text) is not None
    for p in PUNCTUATIONS:
        out = out.replace(p, "" if (p + " " in text or " " + p in text or digit_comma) else " ")
    return PERIOD_STRIP.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Number words → digits, articles dropped, contractions written the canonical way; words re-joined."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def vqa_normalise(text: str) -> str:
    """VQAv2's answer normalisation (lmms-eval ``EvalAIAnswerProcessor``): ``"Two circles."`` → ``"2 circles"``,
    ``"No, the image does not …"`` → ``"no image does not …"``, ``"The Circle!"`` → ``"circle"``."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def words(text: str) -> list[str]:
    """The normalised text's words, with any punctuation the normaliser keeps (``:``, quotes) stripped off."""
    return [w for w in (w.strip(string.punctuation) for w in vqa_normalise(text).split()) if w]


def yes_no(prediction: str) -> str | None:
    """``"yes"`` / ``"no"`` when the prediction's first normalised word is one of them, else None (unanswered)."""
    first = words(prediction)[:1]
    return first[0] if first and first[0] in YES_NO else None


def whole_word_match(prediction: str, answer: str) -> bool:
    """The normalised answer occurs in the normalised prediction as whole words (a contiguous run of them)."""
    got, want = words(prediction), words(answer)
    n = len(want)
    return n > 0 and any(got[i:i + n] == want for i in range(len(got) - n + 1))


def exact_match(prediction: str, answer: str) -> bool:
    """Strict: the normalised prediction is the normalised answer, nothing more."""
    return vqa_normalise(prediction) == vqa_normalise(answer) != ""


def is_yes_no(answer: str) -> bool:
    return vqa_normalise(answer) in YES_NO


def score(prediction: str, answer: str) -> dict[str, bool | str | None]:
    """The field's rule (``correct``: yes/no by the first word, open answers by whole-word match), strict exact
    match beside it, and what was read (``read``: yes / no / None for yes/no questions, the normalised text else)."""
    if is_yes_no(answer):
        read = yes_no(prediction)
        correct = read == vqa_normalise(answer)
    else:
        read, correct = vqa_normalise(prediction), whole_word_match(prediction, answer)
    return {"correct": correct, "exact_match": exact_match(prediction, answer), "read": read}


def with_instruction(question: str, instruction: str) -> str:
    """The question with the short-answer instruction after a newline, as LLaVA-1.5 prompts; once only (a question
    that already carries it, in any case, is left alone); an empty instruction leaves the question as it is."""
    question = question.strip()
    if not instruction or instruction.lower() in question.lower():
        return question
    return f"{question}\n{instruction}"


RULES = {
    "normalisation": "VQAv2 answer processing (lmms-eval EvalAIAnswerProcessor): lowercase, punctuation and period "
                     "rules, number words -> digits, articles a/an/the dropped, contractions",
    "yes/no": "first word of the normalised prediction must be the expected yes/no; anything else is unanswered "
              "(wrong)",
    "open": "the normalised expected answer occurs as whole word(s) in the normalised prediction",
    "exact_match": "normalised prediction == normalised expected answer (strict)",
}
"""The scoring rules in words, recorded with every evaluation result."""
