"""Experiments on the text of PDF documents (`pdf.word_prediction`)."""
