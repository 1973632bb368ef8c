"""SEVLM, a small emotional vision-language model for art: a Gradio app over the model directory
this file lies in (written by `python -m sevlm_jax.main --mode=export --space`).

  pip install -r requirements.txt && python app.py      # what a Hugging Face Space runs

The folder holds its own copy of the sevlm_jax package (beside this file, so it is imported
first). GRADIO_SERVER_NAME and GRADIO_SERVER_PORT set where it listens (127.0.0.1:7860 unless
set; a Space sets them). It shows what the package's local page shows (serve.prediction_json):
the nine emotions' probabilities, the explanation, the explanation of a chosen emotion, each
word's attention over the picture and the VAD predicted for each token.
"""

import functools
import pathlib

import gradio as gr
import pandas as pd
from PIL import Image

from sevlm_jax import errors
from sevlm_jax import vocab
from sevlm_jax.inference import serve
from sevlm_jax.inference import space
from sevlm_jax.inference.predictor import Predictor

HERE = pathlib.Path(__file__).resolve().parent
OWN_CHOICE = "(the model's own choice)"
INTRO = """# What does this artwork make you feel?
Upload a picture: the model names the emotion it evokes (one of the nine ArtEmis emotions) and
explains why. Pick another emotion to read the explanation the model gives for it, and a word of
the explanation to see where the model looked while writing it."""


def open_picture(path: str) -> Image.Image:
  """The upload, read as the local page reads one (its checks and its messages, shown here)."""
  try:
    return serve.decode_upload(pathlib.Path(path).read_bytes(), name=pathlib.Path(path).name)
  except serve.RequestError as e:
    raise gr.Error(str(e)) from None


def blank_outputs():
  return (None, "", "", gr.Dropdown(choices=[], value=None), None,
          pd.DataFrame(space.vad_rows({"tokens": [], "vad": []})), None)


def analyse(predictor, path: str | None, explain_as: str):
  """Every output for a picture: probabilities, emotion, explanation, the words to choose from,
  the first word's attention, the VAD chart, and the answer (kept for choosing other words)."""
  if not path:
    return blank_outputs()
  picture = open_picture(path)
  try:
    answer = serve.prediction_json(predictor, picture,
                                   explain_as if explain_as in vocab.EMOTIONS else None)
  except errors.InputError as e:
    raise gr.Error(str(e)) from None
  words = space.word_choices(answer)
  return (space.emotion_scores(answer), answer["emotion"] or "", answer["explanation"] or "",
          gr.Dropdown(choices=words, value=0 if words else None),
          space.attention_overlay(picture, answer["attention"][0]) if words else None,
          pd.DataFrame(space.vad_rows(answer)), answer)


def show_attention(path: str | None, word: int | None, answer: dict | None):
  """The picture under the attention map of the chosen word."""
  if not path or answer is None or word is None or not 0 <= int(word) < len(answer["words"]):
    return None
  return space.attention_overlay(open_picture(path), answer["attention"][int(word)])


def build(predictor: Predictor) -> gr.Blocks:
  with gr.Blocks(title=space.TITLE) as demo:
    gr.Markdown(INTRO)
    answer = gr.State(None)
    with gr.Row():
      with gr.Column():
        # The upload's own file (image_mode=None: gradio converts nothing), opened as the page
        # opens one: the same pixel limit, read from the header before anything is decoded.
        picture = gr.Image(type="filepath", image_mode=None, label="Artwork",
                           sources=["upload", "clipboard"], height=320, elem_id="picture")
        explain_as = gr.Dropdown([OWN_CHOICE, *vocab.EMOTIONS], value=OWN_CHOICE,
                                 label="Explain as", elem_id="explain-as")
        word = gr.Dropdown(choices=[], value=None, label="A word of the explanation",
                           info="Where the model looked while writing it (its attention over the "
                           "picture's patches, averaged over heads and layers)", elem_id="word")
        attention = gr.Image(label="Attention", type="numpy", format="png", interactive=False,
                             height=320, elem_id="attention")
      with gr.Column():
        emotion = gr.Textbox(label="the emotion is", interactive=False, elem_id="emotion")
        explanation = gr.Textbox(label="because", interactive=False, lines=2,
                                 elem_id="explanation")
        probabilities = gr.Label(
            num_top_classes=vocab.NUM_EMOTIONS, elem_id="probabilities",
            label='How likely the model finds each emotion after "the emotion is"')
    vad = gr.LinePlot(x="token", y="value", color="dimension", sort="x", tooltip="all",
                      label="Valence, arousal and dominance the model predicts for each token",
                      elem_id="vad")
    gr.on([picture.change, explain_as.change], functools.partial(analyse, predictor),
          inputs=[picture, explain_as],
          outputs=[probabilities, emotion, explanation, word, attention, vad, answer],
          api_name="analyse", concurrency_id="model")
    word.input(show_attention, inputs=[picture, word, answer], outputs=attention,
               api_name="attention")
  return demo


def main() -> None:
  predictor = Predictor.from_pretrained(str(HERE), batch_size=1)
  serve.warm_up(predictor)  # compiles now: the first visitor gets an answer at once
  build(predictor).queue(default_concurrency_limit=1).launch(
      max_file_size=serve.MAX_UPLOAD_BYTES,
      show_error=True)  # says why an upload failed, as the page does


if __name__ == "__main__":
  main()
